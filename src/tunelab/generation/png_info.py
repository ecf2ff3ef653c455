"""Generation parameters in the PNG text chunk: A1111's `parameters` line, plus tunelab's exact JSON."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tunelab.errors import TunelabError
from tunelab.methods import generation_methods

PARAMETERS_KEY = "parameters"  # what A1111, Forge and civitai read
TUNELAB_KEY = "tunelab"


def a1111_parameters(record: dict) -> str:
    lines = [record["prompt"]]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    fields = {
        "Steps": record["steps"],
        "Sampler": record["sampler"],
        "CFG scale": record["guidance"],
        "Seed": record["seed"],
        "Size": f"{record['width']}x{record['height']}",
        "Model": record["model"],
    }
    for method in generation_methods():
        fields |= method.a1111_fields(record.get(method.generate_flag.record_key, []))
    lines.append(", ".join(f"{key}: {value}" for key, value in fields.items()))
    return "\n".join(lines)


def save_png(image, path: Path, record: dict) -> Path:
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, a1111_parameters(record))
    info.add_text(TUNELAB_KEY, json.dumps(record, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, pnginfo=info)
    return path


def read_record(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text[TUNELAB_KEY])


def read_options(path: Path) -> dict:
    """The generate options recorded in a PNG by tunelab generate, for `--from-png`."""
    if not path.is_file():
        raise TunelabError(f"--from-png: file not found: {path}")
    try:
        record = read_record(path)
    except (KeyError, OSError, ValueError):
        raise TunelabError(f"--from-png: {path} holds no tunelab record (only PNGs written by tunelab generate do)") from None
    if "options" not in record:
        raise TunelabError(f"--from-png: {path} was written by an older tunelab that did not record all its options")
    return record["options"]
