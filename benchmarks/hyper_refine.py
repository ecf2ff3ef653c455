"""Which refinement of a predicted LoRA: variants of the refine run on held-out subjects (issue 22).

Each variant is `tunelab personalize`'s refinement (hyper/personalize.py: 1e-3, min-SNR 5, batch 4) for 30 steps
with prior preservation on 16 class images, from the predictor's LoRA of each of the first N held-out subjects, on
the subject's 5 training renders; a variant's options are any of `tunelab train`'s (learning_rate, lr_scheduler,
min_snr_gamma, seed, ...) over those; `"class_prompt": null` turns prior preservation off, `"min_snr_gamma":
null` weighs timesteps uniformly. Subject fidelity of 16 images per subject
made with its prompt, as benchmarks/hyper_compare.py scores. One JSON per variant and subject in OUT (a rerun
reuses them); the table is printed and written to OUT/table.md.

    python benchmarks/hyper_refine.py --predictor toyworld --out /tmp/refine \
        --variants '{"min-SNR 5": {}, "uniform": {"min_snr_gamma": null}}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tunelab.hyper.personalize import predicted_and_refined, refine_options
from tunelab.hyper.scoring import fidelity_of, training_renders
from tunelab.hyper.subjects import held_out_subjects
from tunelab.machine import describe
from tunelab.methods.predicted_lora import predictor_path
from tunelab.models.loading import load_pipeline

PRIOR_OPTIONS = ("class_prompt", "num_class_images", "class_sample_steps")


def variant_options(subject, model: str, images: int, variant: dict) -> dict:
    """personalize's refinement of 30 steps with prior preservation, with the variant's options over it."""
    options = refine_options(model, subject.prompt, 30, images, subject.class_prompt) | variant
    if options["class_prompt"] is None:  # no prior preservation: none of its options either
        options = {key: value for key, value in options.items() if key not in PRIOR_OPTIONS}
    return options


def refined_fidelity(pipeline, subject, predictor: Path, model: str, variant: dict, seeds: list[int]) -> dict:
    renders = training_renders(subject)
    started = time.perf_counter()
    lora, _ = predicted_and_refined(predictor, renders, variant_options(subject, model, len(renders), variant))
    seconds = time.perf_counter() - started
    return {"fidelity": fidelity_of(pipeline, lora, subject, seeds), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictor", default="toyworld", help="a predictor file, or toyworld (the shipped one)")
    parser.add_argument("--model", default="toyworld")
    parser.add_argument("--variants", required=True, help='JSON: {"name": {train option: value}}')
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--images", type=int, default=16, help="images per subject and variant")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    predictor = predictor_path(arguments.predictor)
    arguments.out.mkdir(parents=True, exist_ok=True)
    pipeline = load_pipeline(arguments.model)
    pipeline.set_progress_bar_config(disable=True)
    seeds = list(range(1000, 1000 + arguments.images))
    subjects = held_out_subjects()[: arguments.subjects]
    means = {}
    for name, variant in json.loads(arguments.variants).items():
        scores = []
        for subject in subjects:
            cache = arguments.out / f"{name}--{subject.name}.json".replace("/", "_")
            if not cache.is_file():
                cache.write_text(json.dumps(refined_fidelity(pipeline, subject, predictor, arguments.model, variant, seeds)))
            scores.append(json.loads(cache.read_text())["fidelity"])
            print(name, subject.name, f"{scores[-1]:.3f}", flush=True)
        means[name] = sum(scores) / len(scores)
    lines = ["| refinement | mean subject fidelity |", "|---|---|"]
    lines += [f"| {name} | {mean:.3f} |" for name, mean in means.items()]
    lines.append(f"\n{len(subjects)} held-out subjects, {arguments.images} images each. Machine: {describe(1)}.")
    table = "\n".join(lines)
    (arguments.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
