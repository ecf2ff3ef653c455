"""`tunelab demo`: the four techniques on a built-in toyworld subject, compared, on a laptop, with no download."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from tunelab.compare.command import add_common_arguments, run_and_report
from tunelab.compare.config import compare_config_from
from tunelab.errors import TunelabError
from tunelab.toyworld.subjects import subject_named


DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


def demo_config(subject_name: str = "bullseye", scale: float = 1.0):
    """The demo's comparison; `scale` shortens every run (tests use a fraction of the steps)."""
    subject = subject_named(subject_name)
    fields = {"subject": subject.name, "class_word": subject.class_word, "class_prompt": subject.class_prompt}
    data = yaml.safe_load(DEMO_CONFIG.read_text())
    for experiment in data["experiments"]:
        for key, value in experiment.items():
            if isinstance(value, str):
                experiment[key] = value.format(**fields)
        experiment["steps"] = max(1, round(experiment["steps"] * scale))
    return compare_config_from({**data, "subject": subject.name}, "demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subject", default="bullseye", help="toyworld subject: bullseye, checker or flag")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each technique's training steps (0.25: a quicker, rougher look)")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> None:
    if not 0 < args.scale <= 10:
        raise TunelabError(f"--scale must be in (0, 10], got {args.scale}")
    run_and_report(demo_config(args.subject, args.scale), args, f"tunelab demo: four techniques learn the toyworld {args.subject}")
