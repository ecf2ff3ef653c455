"""`tunelab bench speed`: time tunelab's training step beside the reference step, as JSON lines."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from tunelab.bench.speed import BenchOptions, BenchTrainOptions, run_speed_bench
from tunelab.config import add_arguments as add_schema_arguments
from tunelab.config import resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    benches = parser.add_subparsers(dest="bench", required=True, parser_class=type(parser))
    speed = benches.add_parser(
        "speed", help="seconds per step, images/s, peak memory and TFLOP/s of tunelab's training step and the reference's"
    )
    add_schema_arguments(speed, [BenchOptions, BenchTrainOptions])


def run(args: argparse.Namespace) -> None:
    internal = {"_module", "_argv", "debug", "command", "bench"}
    values = {key: value for key, value in vars(args).items() if key not in internal}
    bench, train_options = resolve([BenchOptions, BenchTrainOptions], values)
    rows = run_speed_bench(bench, asdict(train_options))
    if any("error" in row for row in rows):
        # The rows, errors included, are out; exit status 1 says a side failed.
        failed = [f"{row['side']} {row['case']}" for row in rows if "error" in row]
        raise RuntimeError(f"bench side failed: {', '.join(failed)} (its error is in the JSON line)")
