"""One DreamBench evaluation of a (possibly tuned) model: its prompt set for the subject, the same seeds for every
technique, and CLIP-I, CLIP-T and DINO against the subject's real images. For any model and subject, toyworld's included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from tunelab.evaluate.dreambench import embedding_scores
from tunelab.evaluate.dreambench_prompts import subject_prompts
from tunelab.evaluate.embedders import ClipEmbedder, DinoEmbedder
from tunelab.evaluate.protocol import Evaluation
from tunelab.evaluate.sampling import GUIDANCE, STEPS, sample_images


@dataclass(frozen=True)
class Embedders:
    """The local model folders that measure: either may be None."""

    clip: str | None = None
    dino: str | None = None

    def load(self) -> tuple[ClipEmbedder | None, DinoEmbedder | None]:
        return (ClipEmbedder(self.clip) if self.clip else None), (DinoEmbedder(self.dino) if self.dino else None)


def evaluate_with_embedders(pipeline, subject_noun: str, prompt_set: str, reference: list[Image.Image], embedders: Embedders,
                            images_per_prompt: int = 4, seed: int = 1000, steps: int = STEPS,
                            guidance: float = GUIDANCE) -> Evaluation:
    """Every prompt of the set for `subject_noun` ("sks dog") at the same seeds, scored against `reference`.
    The sample grid's row holds each prompt's image at the first seed."""
    prompts = subject_prompts(prompt_set, subject_noun)
    seeds = [seed + index for index in range(images_per_prompt)]
    asked = [prompt for prompt in prompts for _ in seeds]  # prompt-major: images_per_prompt images per prompt
    images = sample_images(pipeline, asked, seeds * len(prompts), steps=steps, guidance=guidance)
    clip, dino = embedders.load()
    measured = embedding_scores([Image.fromarray(image) for image in images], reference, asked, clip, dino)
    scores = {name: round(value, 4) for name, value in measured.items() if name != "details" and value is not None}
    scores["embedding_details"] = measured["details"]
    first_seed: list[np.ndarray] = images[:: len(seeds)]
    return Evaluation(scores, {"prompts": (prompts, first_seed)})
