"""`tunelab generate`: a prompt, a model, optional LoRAs, embeddings, hypernetworks -> PNGs that record how they were made."""

from __future__ import annotations

import argparse
from pathlib import Path

from tunelab.config import add_arguments as add_schema_arguments
from tunelab.config import resolve
from tunelab.generate.grid import generate_grid
from tunelab.generate.png_info import read_options
from tunelab.generate.session import GenerateOptions, generate_images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or TOML file with any of the options below")
    add_schema_arguments(parser, [GenerateOptions])


def generate(options) -> list[Path]:
    """A grid when asked for one, else one image per seed."""
    return generate_grid(options) if options.grid_x is not None else generate_images(options)


def run(args: argparse.Namespace) -> None:
    internal = {"_module", "_argv", "debug", "command", "config"}
    cli_values = {key: value for key, value in vars(args).items() if key not in internal}
    if cli_values.get("from_png"):
        cli_values = {**read_options(Path(cli_values["from_png"])), **cli_values}  # the command line wins
    (options,) = resolve([GenerateOptions], cli_values, args.config)
    for path in generate(options):
        print(f"wrote {path}")
