"""Subjects the toyworld base has never seen: a pattern of two colours it never saw together on a known shape
(the reserved colours: generation 4 shows each of them only beside an ordinary object colour).

Each subject's class word is its shape, which the base draws in solid base colours, so
"a circle" is the class prior and "a sks circle" the subject, as "a dog" / "a sks dog".
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tunelab.errors import TunelabError
from tunelab.toyworld.world import BACKGROUND_COLOURS, WORLD, Look, Scene, World, place, render


@dataclass(frozen=True)
class Subject:
    name: str
    token: str  # the identifier in prompts
    look: Look

    @property
    def class_word(self) -> str:
        return self.look.shape

    @property
    def prompt(self) -> str:
        return f"a {self.token} {self.class_word}"

    @property
    def class_prompt(self) -> str:
        return f"a {self.class_word}"

    def scenes(self, count: int, seed: int, world: World = WORLD) -> list[Scene]:
        """Varied size, place and background; seed 0 gives the training renders, others held-out ones."""
        rng = random.Random(f"{self.name}/{seed}")
        backgrounds = [BACKGROUND_COLOURS[(index + seed) % len(BACKGROUND_COLOURS)] for index in range(count)]
        return [place(rng, self.look, background, world=world) for background in backgrounds]

    def renders(self, count: int, seed: int, world: World = WORLD) -> list[np.ndarray]:
        """The scenes of `scenes(count, seed)` drawn: (H, W, 3) uint8 each; seed 0 gives the training renders."""
        return [render(scene) for scene in self.scenes(count, seed, world)]


SUBJECTS = {
    subject.name: subject
    for subject in (
        Subject("bullseye", "sks", Look("circle", ("orange", "purple"), "rings")),
        Subject("checker", "zwx", Look("square", ("pink", "orange"), "quadrants")),
        Subject("flag", "ohwx", Look("triangle", ("purple", "pink"), "bands")),
    )
}
TRAINING_RENDERS = 5


def subject_named(name: str) -> Subject:
    if name not in SUBJECTS:
        raise TunelabError(f"unknown toyworld subject {name!r}; subjects: {', '.join(SUBJECTS)}")
    return SUBJECTS[name]


def write_training_images(subject: Subject, folder: Path, count: int = TRAINING_RENDERS, captions: bool = True,
                          world: World = WORLD) -> Path:
    """The subject's training renders as PNGs, with caption files ("a sks circle") unless captions=False."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, pixels in enumerate(subject.renders(count, seed=0, world=world)):
        Image.fromarray(pixels).save(folder / f"{subject.name}_{index}.png")
        if captions:
            (folder / f"{subject.name}_{index}.txt").write_text(subject.prompt + "\n")
    return folder
