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


def prepare_run(method_name: str, values: dict, config_path=None):
    """Options, technique and the resolved configuration of one training run, as `tunelab train` builds them."""
    from dataclasses import replace

    from tunelab.config import resolve, to_dict
    from tunelab.methods import method_class

    method_type = method_class(method_name)
    options, method_options = resolve([TrainOptions, method_type.options_schema], values, config_path)
    if options.learning_rate is None:
        options = replace(options, learning_rate=method_type.default_learning_rate)  # recorded as used
    # The technique is part of the run: a config.yaml written here is also a valid --config file.
    resolved = {"technique": method_name, **to_dict(options, method_options)}
    return options, method_type(method_options), resolved


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from tunelab.train.launch import inside_launched_process, relaunch
    from tunelab.train.loop import train
    from tunelab.train.output import check_output_folder

    internal = {"_module", "_argv", "debug", "command", "method", "config"}
    cli_values = {key: value for key, value in vars(args).items() if key not in internal}
    options, method, resolved = prepare_run(args.method, cli_values, args.config)
    check_output_folder(Path(options.out), resolved, options.overwrite)
    if options.num_processes > 1 and not inside_launched_process():
        relaunch(args._argv, options.num_processes, options.mixed_precision)
        return
    artifact = train(options, method, resolved)
    if artifact is not None:
        print(f"saved {artifact}")
