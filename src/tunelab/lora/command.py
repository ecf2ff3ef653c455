"""`tunelab lora <tool>`: extract, merge, combine, resize, convert, info, precision-report (lora/tools.py), check (lora/check.py)."""

from __future__ import annotations

import argparse
from typing import Callable

from tunelab.config import add_arguments as add_schema_arguments
from tunelab.config import resolve
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tools = parser.add_subparsers(dest="tool", required=True, parser_class=type(parser))
    for name, (help_text, inputs, schema, _) in TOOLS.items():
        sub = tools.add_parser(name, help=help_text, description=help_text)
        if inputs is LorasInput:
            sub.add_argument("loras", nargs="+", metavar="FILE[:WEIGHT]", help="LoRA files, each with an optional weight")
        elif inputs is FileInput:
            sub.add_argument("file", metavar="FILE", help="LoRA file (kohya, LyCORIS LoCon/LoHa/LoKr/DoRA or PEFT/diffusers)")
        sub.add_argument("--config", help="YAML or TOML file with any of the options below")
        add_schema_arguments(sub, [schema])


def run(args: argparse.Namespace) -> int:
    _, inputs, schema, function = TOOLS[args.tool]
    internal = {"_module", "_argv", "debug", "command", "tool", "config"}
    cli_values = {key: value for key, value in vars(args).items() if key not in internal}
    schemas = [inputs, schema] if inputs is not None else [schema]
    resolved = resolve(schemas, cli_values, args.config)
    result = function(*resolved)
    return SOMETHING_SKIPPED_EXIT if function is check and not result["all_apply"] else 0
