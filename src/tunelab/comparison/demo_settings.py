"""The demo's comparison: demo.yaml's experiments, filled in for a built-in toyworld subject."""

from __future__ import annotations

from pathlib import Path

import yaml

from tunelab.comparison.config import CompareConfig, compare_config_from
from tunelab.comparison.report_images import GRID_SEEDS
from tunelab.toyworld.subjects import subject_named

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
# `--with-hyper`: the predicted LoRA's experiments, after the four.
PREDICTED_CONFIG = Path(__file__).with_name("demo_predicted.yaml")


def demo_config(subject_name: str = "bullseye", scale: float = 1.0, with_hyper: bool = False) -> CompareConfig:
    """The demo's comparison; `scale` shortens every run and its evaluation (tests use a fraction of the steps);
    `with_hyper` adds the weight predictor's LoRA, predicted and refined."""
    subject = subject_named(subject_name)
    fields = {"subject": subject.name, "class_word": subject.class_word, "class_prompt": subject.class_prompt}
    data = yaml.safe_load(DEMO_CONFIG.read_text())
    if with_hyper:
        data["experiments"] += yaml.safe_load(PREDICTED_CONFIG.read_text())["experiments"]
    for experiment in data["experiments"]:
        for key, value in experiment.items():
            if isinstance(value, str):
                experiment[key] = value.format(**fields)
        if experiment["steps"]:  # a prediction alone stays at 0 steps
            experiment["steps"] = max(1, round(experiment["steps"] * scale))
    # A quicker look evaluates on fewer images too (a longer one gains little past the shipped number).
    data["images_per_prompt"] = min(data["images_per_prompt"], max(GRID_SEEDS, round(data["images_per_prompt"] * scale)))
    return compare_config_from({**data, "subject": subject.name}, "demo")
