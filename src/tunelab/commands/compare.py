"""`tunelab compare CONFIG --out DIR`: techniques side by side on one model and subject."""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Callable, Iterator

from tqdm import tqdm

from tunelab import api


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML/TOML/JSON: shared settings and a list of experiments (see docs/compare.md)")
    add_common_arguments(parser)
    add_parallel_argument(parser, "one per GPU; on the CPU one at a time")


def add_parallel_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--parallel", type=int, default=None,
                        help=f"experiments run at once, each on its share of the cores (default: {default})")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (results, report, one folder per experiment)")
    parser.add_argument("--rerun", action="store_true", help="discard results already in --out and run everything again")
    parser.add_argument("--usd-per-hour", type=float, default=None, help="machine price for the cost column (default 0.29)")


@contextmanager
def progress_bar() -> Iterator[Callable[[int, int, str], None]]:
    """One progress bar over the whole comparison (each experiment's worker shows its own below it); it
    appears with the first experiment, so a bad config is one line with no bar before it."""
    bars = []

    def progress(done: int, total: int, name: str) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="compare", unit="run", position=0))
        bars[0].n = done
        bars[0].set_postfix_str(name)
        bars[0].refresh()

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()


def run(args: argparse.Namespace) -> None:
    with progress_bar() as progress:
        report = api.compare(args.config, out=args.out, rerun=args.rerun, usd_per_hour=args.usd_per_hour, progress=progress,
                             parallel=args.parallel)
    print(f"wrote {report}")
