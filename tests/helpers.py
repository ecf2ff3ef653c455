"""Helpers shared by tests: run the CLI in-process, draw a small subject."""

from __future__ import annotations

from pathlib import Path


def write_subject_images(folder: Path, count: int = 4, size: int = 40) -> Path:
    """A small 'subject': a red disc on varied backgrounds, deterministic."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = Image.new("RGB", (size, size), (30 * index, 90, 200 - 20 * index))
        ImageDraw.Draw(image).ellipse((6 + index, 8, 26 + index, 28), fill=(230, 20, 20))
        image.save(folder / f"subject_{index}.png")
    return folder


def run_cli(*args: str) -> int:
    from tunelab.cli import main

    return main([str(a) for a in args])


def one_line_error(capsys, code) -> str:
    """The stderr of a command that must have failed on bad input: exit 2, one line, no traceback."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def refuse_model_loading(monkeypatch) -> None:
    """Any training that gets past its checks fails at loading: a refusal that must come first is seen to."""
    import tunelab.training.loop  # deferred: as the other helpers, so importing helpers stays light

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded: the check came too late")
    monkeypatch.setattr(tunelab.training.loop, "load_pipeline", refuse)
