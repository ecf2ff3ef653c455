"""The workspace boundary: every way a typed path could leave it is refused with one line."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.ui import workspace as workspace_module
from tunelab.ui.forms import Control, named_control
from tunelab.ui.paths import checked_paths
from tunelab.ui.workspace import Workspace


@pytest.fixture
def space(tmp_path):
    root = tmp_path / "ws"
    (root / "photos").mkdir(parents=True)
    (root / "runs").mkdir()
    (root / "runs/toy.safetensors").write_bytes(b"x")
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    (root / "inner").symlink_to(root / "photos")
    return Workspace(root)


@pytest.mark.parametrize("text, reason", [
    ("../outside", "'..' is not allowed"),
    ("photos/../../outside", "'..' is not allowed"),
    ("/etc/passwd", "not a path inside the workspace"),
    ("~/secrets", "not a path inside the workspace"),
    ("%2e%2e/outside", "encoded characters"),
    ("photos%2f..%2f..", "encoded characters"),
    ("escape", "outside the workspace (through a symlink)"),
    ("escape/new-file", "outside the workspace (through a symlink)"),
    ("", "a path inside the workspace is needed"),
])
def test_paths_leaving_the_workspace_are_refused(space, text, reason):
    with pytest.raises(TunelabError, match="^images: .*" + reason.replace("(", r"\(").replace(")", r"\)")):
        space.path(text, "images")


def test_paths_inside_the_workspace_resolve_to_their_real_place(space):
    assert space.path("photos", "images", must_exist=True) == space.root / "photos"
    assert space.path("inner", "images") == space.root / "photos"  # a symlink that stays inside is fine
    assert space.path("runs/new/out", "out") == space.root / "runs/new/out"
    with pytest.raises(TunelabError, match="does not exist"):
        space.path("missing", "images", must_exist=True)


def test_models_are_presets_workspace_paths_or_under_a_model_dir(space, tmp_path):
    assert space.model("tiny-sd") == "tiny-sd"
    with pytest.raises(TunelabError, match="not a path inside the workspace"):
        space.model(str(tmp_path / "outside"))
    allowed = Workspace(space.root, [tmp_path / "outside"])
    assert allowed.model(str(tmp_path / "outside")) == str((tmp_path / "outside").resolve())
    with pytest.raises(TunelabError, match="neither in the workspace nor under a --model-dir"):
        allowed.model("/etc")


def test_checked_paths_covers_every_path_field(space):
    checked = checked_paths(space, {"model": "tiny-sd", "images": "photos", "out": "runs/a", "lora": ["runs/toy.safetensors:0.8"],
                                    "resume": "latest", "rank": 4})
    assert checked == {"model": "tiny-sd", "images": str(space.root / "photos"), "out": str(space.root / "runs/a"),
                       "lora": [f"{space.root / 'runs/toy.safetensors'}:0.8"], "resume": "latest", "rank": 4}
    for name, value in [("lora", ["../x.safetensors:0.8"]), ("loras", ["escape/x"]), ("file", "/etc/passwd"),
                        ("class_images", "%2e%2e"), ("resume", "../checkpoints"), ("base", "../m"), ("config", "/run.yaml"),
                        ("masks", "../masks"), ("validation_images", "/etc")]:
        with pytest.raises(TunelabError, match=f"^{name}: "):
            checked_paths(space, {name: value})


def test_uploads_are_limited_in_count_and_size(space, tmp_path, monkeypatch):
    files = []
    for index in range(3):
        files.append(tmp_path / f"{index}.png")
        files[-1].write_bytes(b"y" * 100)
    folder = space.take_uploads([str(path) for path in files], "uploads")
    assert sorted(path.name for path in folder.iterdir()) == ["0.png", "1.png", "2.png"]
    monkeypatch.setattr(workspace_module, "MAX_UPLOAD_FILES", 2)
    with pytest.raises(TunelabError, match="more than the limit of 2"):
        space.take_uploads([str(path) for path in files], "uploads")
    monkeypatch.setattr(workspace_module, "MAX_UPLOAD_BYTES", 50)
    with pytest.raises(TunelabError, match="0.png is over"):
        space.take_uploads([str(files[0])], "uploads")


def test_one_server_per_workspace(space):
    space.lock()
    with pytest.raises(TunelabError, match="another `tunelab ui` is serving"):
        Workspace(space.root).lock()


def test_a_refusal_is_shown_under_the_option_it_names():
    controls = {name: Control(name, int, 0, None) for name in ("steps", "rank", "images", "learning_rate")}
    assert named_control("--steps must be at least 1, got 0", controls) == "steps"
    assert named_control("option 'rank': 'x' is not a int", controls) == "rank"
    assert named_control("images: '../x' leaves the workspace ('..' is not allowed)", controls) == "images"
    assert named_control("the model folder holds no model_index.json", controls) is None
