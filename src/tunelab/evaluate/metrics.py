"""Quality metrics on toyworld images, exact because the renderer is known.

Analogues of DreamBench's: subject fidelity (DINO/CLIP-I), prompt fidelity (CLIP-T),
class-prior preservation, and diversity. Each takes images already generated, so the
same images serve the report's grids.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from tunelab.evaluate.scene_reading import look_agreement, palette_labels, read
from tunelab.toyworld.subjects import Subject
from tunelab.toyworld.world import OBJECT_COLOURS

# An object agreeing this well with the subject's look counts as the subject, not as its class.
SUBJECT_LIKE = 0.5


def subject_fidelity(images: list[np.ndarray], subject: Subject) -> float:
    """Mean agreement of each image's object with the subject's shape and coloured pattern (1.0 = a render of it)."""
    return float(np.mean([look_agreement(read(image), subject.look) for image in images]))


def prompt_fidelity(images: list[np.ndarray], asked: list[dict[str, str]]) -> float:
    """Fraction of asked attributes (background, position, size, ...) that the image shows, averaged over images."""
    scores = []
    for image, attributes in zip(images, asked):
        reading = read(image)
        scores.append(np.mean([getattr(reading, name) == value for name, value in attributes.items()]))
    return float(np.mean(scores))


def looks_like_class(image: np.ndarray, subject: Subject) -> bool:
    """A plain member of the class as the base draws it: the class shape, in a base colour, not the subject."""
    reading = read(image)
    return bool(
        reading.found
        and reading.shape == subject.class_word
        and reading.colour in OBJECT_COLOURS
        and look_agreement(reading, subject.look) < SUBJECT_LIKE
    )


def class_preservation(images: list[np.ndarray], subject: Subject) -> float:
    """Fraction of class-prompt images that still look like the class."""
    return float(np.mean([looks_like_class(image, subject) for image in images]))


def diversity(images: list[np.ndarray]) -> float:
    """Mean fraction of pixels whose palette colour differs between two images of the same prompt."""
    labels = [palette_labels(image) for image in images]
    pairs = list(combinations(labels, 2))
    if not pairs:
        return 0.0
    return float(np.mean([(a != b).mean() for a, b in pairs]))

