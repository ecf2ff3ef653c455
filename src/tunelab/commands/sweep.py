"""`tunelab sweep CONFIG --out DIR`: a grid or an Optuna search over one technique's options; the frontier report."""

from __future__ import annotations

import argparse

from tunelab import api
from tunelab.commands.compare import add_common_arguments, progress_bar


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML/TOML/JSON: shared settings, technique, training, space, search (docs/evaluation.md)")
    add_common_arguments(parser)
    parser.add_argument("--parallel", type=int, default=None,
                        help="trials at once (default: one per GPU, else 1; with --ray: what the cluster has)")
    parser.add_argument("--ray", metavar="ADDRESS", default=None,
                        help="run the trials on a Ray cluster (`auto`, HOST:PORT, or `local` for an instance on this machine)")


def run(args: argparse.Namespace) -> None:
    with progress_bar() as progress:
        report = api.sweep(args.config, out=args.out, rerun=args.rerun, usd_per_hour=args.usd_per_hour,
                           parallel=args.parallel, ray=args.ray, progress=progress)
    print(f"wrote {report}")
