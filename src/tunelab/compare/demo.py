"""`tunelab demo`: the four techniques on a built-in toyworld subject, compared, on a laptop, with no download."""

from __future__ import annotations

import argparse


def demo_config(subject_name: str = "bullseye", scale: float = 1.0):
    """The demo's comparison; `scale` shortens every run (tests use a fraction of the steps)."""
    from tunelab.compare.config import compare_config_from
    from tunelab.toyworld.subjects import subject_named

    subject = subject_named(subject_name)

    def steps(count: int) -> int:
        return max(1, round(count * scale))

    shared = {"batch_size": 4, "seed": 0}
    # Prior preservation for every technique that changes the denoiser: without it the change reaches the
    # class prompt and the empty prompt too, and classifier-free guidance cancels what was learned.
    prior = {"class_prompt": subject.class_prompt, "num_class_images": 16, "class_sample_steps": 20}
    experiments = [  # settings tuned on the toyworld base (docs/compare.md)
        {"name": "lora", "technique": "lora", "steps": steps(200), "learning_rate": 5e-3, "rank": 8,
         "targets": ["attention", "feedforward"], **prior, **shared},
        {"name": "dreambooth", "technique": "dreambooth", "steps": steps(200), "learning_rate": 2e-4, **prior, **shared},
        {"name": "textual_inversion", "technique": "textual_inversion", "steps": steps(400), "learning_rate": 0.2,
         "token": f"<{subject.name}>", "init_word": subject.class_word, "vectors": 2, **shared},
        {"name": "hypernetwork", "technique": "hypernetwork", "steps": steps(200), "learning_rate": 5e-3, **prior, **shared},
    ]
    return compare_config_from({"model": "toyworld", "subject": subject.name, "experiments": experiments}, "demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tunelab.compare.command import add_common_arguments

    parser.add_argument("--subject", default="bullseye", help="toyworld subject: bullseye, checker or flag")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each technique's training steps (0.25: a quicker, rougher look)")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> None:
    from tunelab.compare.command import run_and_report

    from tunelab.errors import TunelabError

    if not 0 < args.scale <= 10:
        raise TunelabError(f"--scale must be in (0, 10], got {args.scale}")
    run_and_report(demo_config(args.subject, args.scale), args, f"tunelab demo: four techniques learn the toyworld {args.subject}")
