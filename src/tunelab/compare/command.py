"""`tunelab compare CONFIG --out DIR`: techniques side by side on one model and subject."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from tunelab.compare.config import load_compare_config
from tunelab.compare.report import write_reports
from tunelab.compare.run import run_comparison
from tunelab.machine import describe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML/TOML/JSON: shared settings and a list of experiments (see docs/compare.md)")
    add_common_arguments(parser)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (results, report, one folder per experiment)")
    parser.add_argument("--rerun", action="store_true", help="discard results already in --out and run everything again")
    parser.add_argument("--usd-per-hour", type=float, default=None, help="machine price for the cost column (default 0.29)")


def run_and_report(config, args: argparse.Namespace, title: str) -> Path:
    """Run the comparison with one progress bar over the whole run; write and return the HTML report."""
    if args.usd_per_hour is not None:
        config = replace(config, options=replace(config.options, usd_per_hour=args.usd_per_hour))
    out = Path(args.out)
    with tqdm(total=len(config.experiments) + 1, desc="compare", unit="run", position=0) as bar:

        def progress(done: int, total: int, name: str) -> None:
            bar.n = done
            bar.set_postfix_str(name)
            bar.refresh()

        records = run_comparison(config, out, rerun=args.rerun, progress=progress)


    notes = [f"Model {config.options.model}, subject {config.options.subject}; cost at ${config.options.usd_per_hour}/h.",
             f"Machine: {describe(torch.get_num_threads())}."]
    paths = write_reports(records, out, title, notes)
    print(f"wrote {paths['html']}")
    return paths["html"]


def run(args: argparse.Namespace) -> None:
    run_and_report(load_compare_config(args.config), args, "tunelab compare")
