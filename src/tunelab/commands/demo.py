"""`tunelab demo`: the four techniques on a built-in toyworld subject, compared, on a laptop, with no download."""

from __future__ import annotations

import argparse

from tunelab import api
from tunelab.commands.compare import add_common_arguments, add_parallel_argument, progress_bar


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subject", default="bullseye", help="toyworld subject: bullseye, checker or flag")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each technique's training steps (0.25: a quicker, rougher look)")
    parser.add_argument("--with-hyper", action="store_true",
                        help="add the shipped weight predictor's LoRA: predicted (0 steps) and refined (30 steps)")
    add_common_arguments(parser)
    add_parallel_argument(parser, "one per GPU; on the CPU one per core")


def run(args: argparse.Namespace) -> None:
    with progress_bar() as progress:
        report = api.demo(out=args.out, subject=args.subject, scale=args.scale, rerun=args.rerun,
                          usd_per_hour=args.usd_per_hour, progress=progress, with_hyper=args.with_hyper,
                          parallel=args.parallel)
    print(f"wrote {report}")
