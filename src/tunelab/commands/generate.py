"""`tunelab generate`: a prompt, a model, optional LoRAs, embeddings, hypernetworks -> PNGs that record how they were made."""

from __future__ import annotations

import argparse

from tunelab import api
from tunelab.config import add_arguments as add_schema_arguments
from tunelab.generation.grid import generate_grid
from tunelab.generation.session import GenerateOptions, generate_images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or TOML file with any of the options below")
    add_schema_arguments(parser, [GenerateOptions])


def run(args: argparse.Namespace) -> None:
    internal = {"_module", "_argv", "debug", "command", "config"}
    options = api.generate_options({key: value for key, value in vars(args).items() if key not in internal}, args.config)
    paths = generate_grid(options) if options.grid_x is not None else generate_images(options)
    for path in paths:
        print(f"wrote {path}")
