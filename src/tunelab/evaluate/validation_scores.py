"""Scores a training run's validations measure besides the loss (training/validation.py), made from its options
before any model loads.

SCORES is the one list: score name -> (what it needs, for messages; a maker from the run's options and
technique, None when the options do not ask for it). A score from other embedders (CLIP-I, DINO) is one
more entry here.
"""

from __future__ import annotations

from typing import Callable

from tunelab.config import closest
from tunelab.errors import TunelabError
from tunelab.evaluate.metrics import subject_fidelity
from tunelab.evaluate.sampling import GUIDANCE, sample_images
from tunelab.toyworld.subjects import subject_named
from tunelab.training.options import TrainOptions
from tunelab.training.validation import VALIDATION_LOSS, ValidationMetric


def subject_fidelity_score(options: TrainOptions, method) -> ValidationMetric | None:
    """toyworld's exact subject fidelity of --validation-samples images of the instance prompt (fixed seeds)."""
    if options.validation_subject is None:
        return None
    subject = subject_named(options.validation_subject)
    prompt = options.prompt if options.prompt is not None else method.default_prompt
    seeds = [options.validation_seed + index for index in range(options.validation_samples)]

    def measure(pipeline) -> float:
        images = sample_images(pipeline, [prompt] * len(seeds), seeds, steps=options.sample_steps, guidance=GUIDANCE)
        return subject_fidelity(images, subject)

    return ValidationMetric("subject_fidelity", True, measure)


SCORES: dict[str, tuple[str, Callable[[TrainOptions, object], ValidationMetric | None]]] = {
    "subject_fidelity": ("--validation-subject NAME (a toyworld subject)", subject_fidelity_score),
}


def validation_scores(options: TrainOptions, method) -> list[ValidationMetric]:
    """The scores this run's options ask for; --keep-best naming one they do not is refused here."""
    scores = [score for _, make in SCORES.values() if (score := make(options, method)) is not None]
    wanted = options.keep_best
    if wanted and wanted != VALIDATION_LOSS and wanted not in {score.name for score in scores}:
        if wanted in SCORES:
            raise TunelabError(f"--keep-best {wanted} needs {SCORES[wanted][0]}")
        raise TunelabError(f"--keep-best {wanted!r} is not a validation metric{closest(wanted, [VALIDATION_LOSS, *SCORES])} "
                           f"(metrics: {', '.join([VALIDATION_LOSS, *SCORES])})")
    return scores
