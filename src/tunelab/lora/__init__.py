"""LoRA tools from Python, and the LoRA maths they use (format-free sets of (down, up, alpha) per module).

    import tunelab.lora
    tunelab.lora.extract("base_model", "tuned_model", "extracted.safetensors", rank=32)
    tunelab.lora.merge("base_model", ["style.safetensors:0.7"], "merged/")
    summary = tunelab.lora.info("style.safetensors")

Each function takes the options of `tunelab lora <tool>` as keyword arguments, checked as strictly
as the command line (a misspelt one raises TunelabError naming the nearest); LoRA lists take
"FILE[:WEIGHT]" strings or (file, weight) pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config import checked_values
from tunelab.lora import check as compatibility_check
from tunelab.lora import tools


def _options(schema: type, where: str, values: dict[str, Any]):
    values = {key: str(value) if isinstance(value, Path) else value for key, value in values.items() if value is not None}
    return schema(**checked_values([schema], values, where))


def _weighted(loras) -> list[str]:
    return [f"{item[0]}:{item[1]}" if isinstance(item, tuple) else str(item) for item in loras]


def extract(base: str | Path, tuned: str | Path, out: str | Path, *, rank: int, **options) -> Path:
    """A LoRA of `tuned - base` by SVD (`tunelab lora extract`)."""
    return tools.extract(_options(tools.ExtractOptions, "tunelab.lora.extract",
                                  {"base": base, "tuned": tuned, "out": out, "rank": rank, **options}))


def merge(model: str | Path, loras: list, out: str | Path, **options) -> Path:
    """LoRAs baked into a model, saved as a diffusers folder or a single file (`tunelab lora merge`)."""
    return tools.merge(_options(tools.MergeOptions, "tunelab.lora.merge",
                                {"model": model, "lora": _weighted(loras), "out": out, **options}))


def combine(loras: list, out: str | Path, **options) -> Path:
    """Several LoRAs as one: stacked ranks (exact) or an SVD at a new rank (`tunelab lora combine`)."""
    inputs = tools.LorasInput(_weighted(loras))
    return tools.combine(inputs, _options(tools.CombineOptions, "tunelab.lora.combine", {"out": out, **options}))


def resize(file: str | Path, out: str | Path, **options) -> Path:
    """A LoRA at another rank, its scale kept (`tunelab lora resize`)."""
    return tools.resize(tools.FileInput(str(file)), _options(tools.ResizeOptions, "tunelab.lora.resize", {"out": out, **options}))


def convert(file: str | Path, out: str | Path, *, to: str, **options) -> Path:
    """A LoRA rewritten as kohya or PEFT (`tunelab lora convert`)."""
    return tools.convert(tools.FileInput(str(file)),
                         _options(tools.ConvertOptions, "tunelab.lora.convert", {"out": out, "to": to, **options}))


def info(file: str | Path) -> dict:
    """The file's summary: modules, ranks, alphas, algorithm, precision, size and metadata (`tunelab lora info --json`)."""
    return tools.summary_of(tools.FileInput(str(file)))


def check(file: str | Path, model: str | Path) -> dict:
    """Which of the file's modules A1111, ComfyUI and diffusers would apply on the model, which they would
    skip and why (`tunelab lora check --json`); `all_apply` is False when any would be skipped."""
    return compatibility_check.compatibility(str(file), str(model))
