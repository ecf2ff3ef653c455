"""Bad comparison input: one clear line, exit 2, and nothing run or mixed."""

import json
import subprocess

import pytest
import yaml

from helpers import run_cli

LORA = {"name": "lora", "technique": "lora", "steps": 2}


def write_config(path, **changes):
    config = {"model": "toyworld", "subject": "bullseye", "experiments": [LORA], **changes}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"experiments": [{"name": "x", "technique": "loar"}]}, "unknown technique 'loar' (did you mean 'lora'?)"),
        ({"metrics": ["subject_fidelity", "clip_score"]}, "unknown metric 'clip_score'"),
        ({"experiments": [{**LORA, "rnak": 4}]}, "unknown option 'rnak' in"),
        ({"experiments": [{**LORA, "out": "/tmp/x"}]}, "'out' is set by the comparison"),
        ({"experiments": [LORA, LORA]}, "experiment names must be unique"),
        ({"experiments": []}, "'experiments' must be a non-empty list"),
        ({"subject": "unicorn"}, "neither a toyworld subject"),
        ({"usd_per_hour": "cheap"}, "must be a number"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys, changes, message):
    code = run_cli("compare", write_config(tmp_path / "compare.yaml", **changes), "--out", tmp_path / "out")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_subject_folder_with_no_images_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    config = write_config(tmp_path / "compare.yaml", subject=str(tmp_path / "empty"), prompt="a photo of sks dog")
    assert run_cli("compare", config, "--out", tmp_path / "out") == 2
    assert "no images found" in capsys.readouterr().err


def test_an_output_folder_in_use_by_another_compare_run_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen(["sleep", "30"])
    try:
        (out / ".compare.lock").write_text(str(other.pid))
        assert run_cli("compare", write_config(tmp_path / "c.yaml"), "--out", out) == 2
        assert f"in use by another compare run (pid {other.pid})" in capsys.readouterr().err
    finally:
        other.kill()
    assert sorted(p.name for p in out.iterdir()) == [".compare.lock"]  # nothing written beside the other run


def test_results_of_other_settings_or_other_files_are_not_mixed_in(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "compare.json").write_text(json.dumps({"settings": {"model": "elsewhere"}}))
    assert run_cli("compare", write_config(tmp_path / "c.yaml"), "--out", out) == 2
    assert "holds results of a comparison with other settings" in capsys.readouterr().err
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert run_cli("compare", write_config(tmp_path / "c.yaml"), "--out", stranger) == 2
    assert "not empty and holds no comparison" in capsys.readouterr().err
    assert not (out / ".compare.lock").exists()  # the lock is released on refusal


def test_rerun_empties_a_comparison_but_never_another_folder(tmp_path, capsys):
    from tunelab.comparison.config import compare_config_from
    from tunelab.comparison.run import check_output_folder

    config = compare_config_from({"experiments": [LORA]}, "test")
    out = tmp_path / "out"
    (out / "experiments" / "lora").mkdir(parents=True)
    (out / "experiments" / "lora" / "result.json").write_text("{}")
    (out / "compare.json").write_text(json.dumps({"settings": {"model": "elsewhere"}}))
    check_output_folder(out, config, rerun=True)
    assert not (out / "experiments").exists()
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert run_cli("compare", write_config(tmp_path / "c.yaml"), "--out", stranger, "--rerun") == 2
    assert (stranger / "notes.txt").read_text() == "mine"
