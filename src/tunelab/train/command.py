"""`tunelab train <technique>`: parse, resolve the configuration, run the loop."""

from __future__ import annotations

import argparse

from tunelab.train.options import TrainOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tunelab.config import add_arguments as add_schema_arguments
    from tunelab.methods import METHODS, method_class

    methods = parser.add_subparsers(dest="method", required=True, parser_class=type(parser))
    for name in METHODS:
        schema = method_class(name).options_schema
        sub = methods.add_parser(name, help=f"train {name}")
        sub.add_argument("--config", help="YAML or TOML file with any of the options below")
        add_schema_arguments(sub, [TrainOptions, schema])


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from tunelab.config import resolve, write_resolved
    from tunelab.methods import method_class
    from tunelab.train.loop import train

    method_type = method_class(args.method)
    internal = {"_module", "debug", "command", "method", "config"}
    cli_values = {key: value for key, value in vars(args).items() if key not in internal}
    options, method_options = resolve([TrainOptions, method_type.options_schema], cli_values, args.config)
    resolved = write_resolved(Path(options.out) / "config.yaml", options, method_options)
    resolved["technique"] = args.method
    artifact = train(options, method_type(method_options), resolved)
    if artifact is not None:
        print(f"saved {artifact}")
