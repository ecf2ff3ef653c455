"""Refining a predicted LoRA with ordinary LoRA steps (HyperDreamBooth's rank-relaxed fast fine-tuning).

The trainer runs a plain LoRA of the prediction's rank on the same layers, its down and up starting from the
predicted ones (`LoraFromStart`, which `tunelab train predicted_lora` runs too); both train in full, so the
refined LoRA leaves the fixed bases.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.formats.lora_set import LoraSet
from tunelab.methods.lora import LoraMethod
from tunelab.methods.predicted_lora import REFINE_LEARNING_RATE, LoraFromStart
from tunelab.training.loop import train
from tunelab.training.prepare import prepare_run


def refine(start: LoraSet, model: str, images: Path, out: Path, prompt: str, steps: int, *, class_prompt: str | None = None,
           learning_rate: float = REFINE_LEARNING_RATE, seed: int = 0, targets: tuple[str, ...] = ("attention",)) -> Path:
    """`steps` LoRA steps from `start` on the images in folder `images`; returns the refined kohya LoRA file."""
    rank = next(iter(start.values())).rank
    values = {"model": model, "images": str(images), "out": str(out), "prompt": prompt, "steps": steps,
              "learning_rate": learning_rate, "rank": rank, "alpha": float(rank), "targets": list(targets),
              "batch_size": min(4, sum(1 for _ in images.iterdir())), "seed": seed, "log_with": "none", "overwrite": True}
    if class_prompt:
        values |= {"class_prompt": class_prompt, "num_class_images": 16, "class_sample_steps": 20}
    run = prepare_run(LoraMethod.name, values)
    method = LoraFromStart(run.method.options, start)
    return Path(train(run.options, method, run.resolved | {"initialised_from": "a predicted LoRA"}, run.family_options))
