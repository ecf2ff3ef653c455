"""The LoRA tools' one table: each tool's help, input and options schemas and function, for the command line
and the web UI alike."""

from __future__ import annotations

from typing import Callable

from tunelab.lora.check import SOMETHING_SKIPPED_EXIT, CheckOptions, check
from tunelab.lora.tools import (
    CombineOptions,
    ConvertOptions,
    ExtractOptions,
    FileInput,
    InfoOptions,
    LorasInput,
    MergeOptions,
    PrecisionReportOptions,
    ResizeOptions,
    combine,
    convert,
    extract,
    info,
    merge,
    precision_report,
    resize,
)

# tool -> (help, positional input schema or None, options schema, function)
TOOLS: dict[str, tuple[str, type | None, type, Callable]] = {
    "extract": ("extract a LoRA from a base and a fine-tuned model by SVD", None, ExtractOptions, extract),
    "merge": ("bake LoRAs into a model and save it (diffusers folder or single file)", None, MergeOptions, merge),
    "combine": ("merge several LoRAs into one: stacked ranks or SVD at a new rank", LorasInput, CombineOptions, combine),
    "resize": ("change a LoRA's rank by SVD, keeping its scale", FileInput, ResizeOptions, resize),
    "convert": ("rewrite a LoRA as kohya or PEFT, optionally in another precision", FileInput, ConvertOptions, convert),
    "info": ("show a LoRA file's modules, ranks, alphas, precision, size and metadata", FileInput, InfoOptions, info),
    "precision-report": (
        "file size and denoiser-output deviation of a LoRA stored in fp32, fp16 and bf16",
        FileInput,
        PrecisionReportOptions,
        precision_report,
    ),
    "check": (
        f"which modules A1111, ComfyUI and diffusers would apply on a model, which they would skip and why "
        f"(exit status {SOMETHING_SKIPPED_EXIT} when one would be skipped)",
        FileInput,
        CheckOptions,
        check,
    ),
}
