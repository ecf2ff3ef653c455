"""`tunelab lora <tool>`: extract, merge, combine, resize, convert, info, precision-report (lora/tools.py), check (lora/check.py)."""

from __future__ import annotations

import argparse
from tunelab.config import add_arguments as add_schema_arguments
from tunelab.config import resolve
from tunelab.lora.check import SOMETHING_SKIPPED_EXIT, check
from tunelab.lora.tool_table import TOOLS
from tunelab.lora.tools import FileInput, LorasInput


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
