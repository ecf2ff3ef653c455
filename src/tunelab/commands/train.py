"""`tunelab train <technique>`: parse, resolve the configuration, run the loop."""

from __future__ import annotations

import argparse
from pathlib import Path

from tunelab import api
from tunelab.config import add_arguments as add_schema_arguments
from tunelab.methods import METHODS, method_class
from tunelab.training.launch import inside_launched_process, relaunch
from tunelab.training.output import check_output_folder
from tunelab.training.prepare import prepare_run, run_schemas


def add_arguments(parser: argparse.ArgumentParser) -> None:
    methods = parser.add_subparsers(dest="method", required=True, parser_class=type(parser))
    for name in METHODS:
        method = method_class(name)
        sub = methods.add_parser(name, help=f"train {method.title}")
        sub.add_argument("--config", help="YAML or TOML file with any of the options below")
        add_schema_arguments(sub, run_schemas(name))
        learning_rate = next(action for action in sub._actions if action.dest == "learning_rate")
        learning_rate.help = f"learning rate (default: {method.default_learning_rate:g}, this technique's usual rate)"


def run(args: argparse.Namespace) -> None:
    internal = {"_module", "_argv", "debug", "command", "method", "config"}
    cli_values = {key: value for key, value in vars(args).items() if key not in internal}
    prepared = prepare_run(args.method, cli_values, args.config)
    if prepared.options.num_processes > 1 and not inside_launched_process():
        # The command starts its copies through accelerate; each of them runs the branch below.
        check_output_folder(Path(prepared.options.out), prepared.resolved, prepared.options.overwrite)
        relaunch(args._argv, prepared.options.num_processes, prepared.options.mixed_precision)
        return
    result = api.train(args.method, config=args.config, **cli_values)
    if result.artifact is not None:
        print(f"saved {result.artifact}")
