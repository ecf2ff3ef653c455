"""`tunelab demo`: the four techniques on a built-in toyworld subject, compared, on a laptop, with no download."""

from __future__ import annotations

import argparse

from tunelab import api
from tunelab.commands.compare import add_common_arguments, progress_bar


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subject", default="bullseye", help="toyworld subject: bullseye, checker or flag")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each technique's training steps (0.25: a quicker, rougher look)")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> None:
    with progress_bar() as progress:
        report = api.demo(out=args.out, subject=args.subject, scale=args.scale, rerun=args.rerun,
                          usd_per_hour=args.usd_per_hour, progress=progress)
    print(f"wrote {report}")
