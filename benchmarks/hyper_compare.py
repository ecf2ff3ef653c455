"""Issue 22's table: predicted LoRAs (and predicted + a few refine steps) against the demo's LoRA, on held-out subjects.

For each of the first N held-out procedural subjects (never seen by any pretraining run): the base, a LoRA trained
with the demo's LoRA settings (src/tunelab/comparison/demo.yaml) on the subject's 5 training renders, the LoRA
`tunelab personalize` predicts from those renders, and that prediction refined with a tenth of the LoRA's steps.
Subject fidelity is toyworld's exact metric on images made with the subject's prompt ("a sks circle"). One JSON
per subject and arm in OUT (a rerun reuses them); the markdown table is printed and written to OUT/table.md.

    python benchmarks/hyper_compare.py --model BASE --predictor predictor.safetensors --out /tmp/hyper-compare
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image

from tunelab import api
from tunelab.comparison.demo_settings import demo_config
from tunelab.formats.lora_io import read_lora
from tunelab.hyper.personalize import personalize
from tunelab.hyper.scoring import fidelity_of, training_renders
from tunelab.hyper.subjects import held_out_subjects
from tunelab.machine import describe
from tunelab.methods.predicted_lora import REFINE_LEARNING_RATE
from tunelab.models.loading import load_pipeline


def demo_lora_options(subject) -> dict:
    """The demo's LoRA experiment, its placeholders filled for this subject."""
    experiment = next(e for e in demo_config("bullseye").experiments if e.technique == "lora")
    options = dict(experiment.training)
    options["class_prompt"] = subject.class_prompt
    return options


def measured(path: Path, work) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    result = work()
    path.write_text(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--predictor", type=Path, help="the weight predictor (leave out to run only the base and the LoRA)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--images", type=int, default=16, help="images per subject and arm")
    parser.add_argument("--refine-lr", type=float, default=REFINE_LEARNING_RATE, help="learning rate of the refinement (default: personalize's)")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    out = arguments.out
    out.mkdir(parents=True, exist_ok=True)
    pipeline = load_pipeline(arguments.model)
    pipeline.set_progress_bar_config(disable=True)
    seeds = list(range(1000, 1000 + arguments.images))
    rows = []
    for subject in held_out_subjects()[: arguments.subjects]:
        folder = out / "data" / subject.name
        folder.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(training_renders(subject)):
            Image.fromarray(image).save(folder / f"{index}.png")
        work = out / subject.name
        work.mkdir(exist_ok=True)
        options = demo_lora_options(subject)
        steps = options["steps"]
        row = {"subject": subject.name}

        def score(lora_path):
            return fidelity_of(pipeline, read_lora(lora_path)[0] if lora_path else None, subject, seeds)

        row["base"] = measured(work / "base.json", lambda: {"fidelity": score(None)})

        def lora_arm():
            started = time.perf_counter()
            result = api.train("lora", model=arguments.model, images=folder, out=work / "lora", prompt=subject.prompt,
                               log_with="none", overwrite=True, **options)
            return {"fidelity": score(result.artifact), "seconds": time.perf_counter() - started, "steps": steps}

        row["lora"] = measured(work / "lora.json", lora_arm)
        if arguments.predictor:
            def predicted_arm():
                made = personalize(str(arguments.predictor), [str(folder)], work / "predicted.safetensors", log=lambda line: None)
                return {"fidelity": score(made.path), "seconds": made.total_seconds, "predict_seconds": made.predict_seconds}

            def refined_arm():
                made = personalize(str(arguments.predictor), [str(folder)], work / "refined.safetensors", model=arguments.model,
                                   refine_steps=steps // 10, prompt=subject.prompt, class_prompt=subject.class_prompt,
                                   learning_rate=arguments.refine_lr, log=lambda line: None)
                return {"fidelity": score(made.path), "seconds": made.total_seconds, "steps": steps // 10,
                        "learning_rate": arguments.refine_lr}

            row["predicted"] = measured(work / "predicted.json", predicted_arm)
            row["refined"] = measured(work / "refined.json", refined_arm)
        rows.append(row)
        print(json.dumps(row), flush=True)
    arms = [arm for arm in ("base", "lora", "predicted", "refined") if arm in rows[0]]
    lines = ["| subject | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    lines += [f"| {row['subject']} | " + " | ".join(f"{row[arm]['fidelity']:.3f}" for arm in arms) + " |" for row in rows]
    means = {arm: sum(row[arm]["fidelity"] for row in rows) / len(rows) for arm in arms}
    lines.append("| **mean** | " + " | ".join(f"**{means[arm]:.3f}**" for arm in arms) + " |")
    seconds = {arm: sum(row[arm].get("seconds", 0) for row in rows) / len(rows) for arm in arms if arm != "base"}
    lines.append("| seconds per subject | " + " | ".join("" if arm == "base" else f"{seconds[arm]:.1f}" for arm in arms) + " |")
    if "predicted" in means:
        predict = sum(row["predicted"]["predict_seconds"] for row in rows) / len(rows)
        lines.append(f"\nPredicted / LoRA: {means['predicted'] / means['lora']:.2f}; refined / LoRA: "
                     f"{means['refined'] / means['lora']:.2f}; one prediction takes {predict * 1000:.0f} ms. Machine: {describe(1)}.")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
