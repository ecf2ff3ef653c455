"""The demo's comparison: demo.yaml's experiments, filled in for a built-in toyworld subject."""

from __future__ import annotations

from pathlib import Path

import yaml

from tunelab.comparison.config import CompareConfig, compare_config_from
from tunelab.toyworld.subjects import subject_named

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


def demo_config(subject_name: str = "bullseye", scale: float = 1.0) -> CompareConfig:
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
