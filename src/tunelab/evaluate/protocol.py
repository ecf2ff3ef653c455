"""One evaluation of a (possibly tuned) toyworld model on a subject: which prompts, which seeds, which scores.

The same prompts and seeds for every technique, so their scores and sample grids compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunelab.evaluate.metrics import class_preservation, diversity, prompt_fidelity, subject_fidelity
from tunelab.evaluate.sampling import GUIDANCE, STEPS, sample_images
from tunelab.toyworld.subjects import Subject
from tunelab.toyworld.world import BACKGROUND_COLOURS, POSITIONS, position_phrase

METRICS = ("subject_fidelity", "prompt_fidelity", "prior_drift", "diversity")


def prompt_variations(noun: str, count: int) -> list[tuple[str, dict[str, str]]]:
    """Prompts that ask for a background or a place, with what each asks for."""
    asks = [(f"a {noun} on a {colour} background", {"background": colour}) for colour in BACKGROUND_COLOURS]
    asks += [(f"a {noun} {position_phrase(where)}", {"position": where}) for where in POSITIONS]
    return [asks[index % len(asks)] for index in range(count)]


@dataclass
class Evaluation:
    scores: dict[str, float]  # class_preservation rather than prior_drift: drift needs the base's score
    rows: dict[str, tuple[list[str], list[np.ndarray]]]  # grid row name -> (prompts, images)


def evaluate_subject(pipeline, subject: Subject, identifier: str, images_per_prompt: int = 8, seed: int = 1000,
                     steps: int = STEPS, guidance: float = GUIDANCE) -> Evaluation:
    """`identifier` names the subject in prompts: its token, or a textual-inversion token."""
    seeds = [seed + index for index in range(images_per_prompt)]
    noun = f"{identifier} {subject.class_word}"

    def images(prompts: list[str]) -> list[np.ndarray]:
        return sample_images(pipeline, prompts, seeds, steps=steps, guidance=guidance)

    subject_prompts = [f"a {noun}"] * images_per_prompt
    varied = prompt_variations(noun, images_per_prompt)
    class_prompts = [subject.class_prompt] * images_per_prompt
    subject_images, varied_images, class_images = images(subject_prompts), images([p for p, _ in varied]), images(class_prompts)
    scores = {
        "subject_fidelity": subject_fidelity(subject_images, subject),
        "prompt_fidelity": prompt_fidelity(varied_images, [asked for _, asked in varied]),
        "class_preservation": class_preservation(class_images, subject),
        "diversity": diversity(subject_images),
    }
    rows = {
        "subject": (subject_prompts, subject_images),
        "prompts": ([p for p, _ in varied], varied_images),
        "class": (class_prompts, class_images),
    }
    return Evaluation({name: round(value, 4) for name, value in scores.items()}, rows)
