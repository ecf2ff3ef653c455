"""Predicted LoRAs, and how well they draw their subjects (toyworld's exact subject fidelity)."""

from __future__ import annotations

import numpy as np

from tunelab.evaluate.metrics import subject_fidelity
from tunelab.evaluate.sampling import STEPS, sample_images
from tunelab.formats.lora_set import LoraSet
from tunelab.lora.fixed_basis import FixedBasis
from tunelab.lora.merging import applied
from tunelab.lora.modules import adaptable_modules
from tunelab.lora.weight_predictor import WeightPredictor, predict_lora
from tunelab.toyworld.subjects import TRAINING_RENDERS, Subject
from tunelab.toyworld.world import WORLD


def training_renders(subject: Subject, world=WORLD) -> list[np.ndarray]:
    """The images a user would give: the subject's training renders (the demo's, `tunelab toyworld subject`'s)."""
    return subject.renders(TRAINING_RENDERS, seed=0, world=world)


def fidelity_of(pipeline, lora: LoraSet | None, subject: Subject, seeds: list[int], steps: int = STEPS) -> float:
    """Subject fidelity of images made with the subject's prompt, the LoRA merged in (None: the base)."""
    loras = [(lora, 1.0)] if lora else []
    with applied(adaptable_modules(pipeline), loras):
        images = sample_images(pipeline, [subject.prompt] * len(seeds), seeds, steps=steps)
    return subject_fidelity(images, subject)


def score_predictions(pipeline, predictor: WeightPredictor, basis: FixedBasis, subjects: list[Subject],
                      seeds: list[int], steps: int = STEPS) -> list[dict]:
    """Per subject: the base's fidelity, the predicted LoRA's, and the prediction's seconds."""
    rows = []
    for subject in subjects:
        lora, seconds = predict_lora(predictor, basis, training_renders(subject))
        rows.append({"subject": subject.name, "base": fidelity_of(pipeline, None, subject, seeds, steps),
                     "predicted": fidelity_of(pipeline, lora, subject, seeds, steps), "predict_seconds": seconds})
    return rows
