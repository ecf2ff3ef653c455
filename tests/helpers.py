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
