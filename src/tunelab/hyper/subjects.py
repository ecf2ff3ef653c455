"""Procedural subjects for pretraining a weight predictor: two-colour patterns toyworld never showed.

A subject is a shape with an ordered pair of the reserved colours (never shown together in pretraining) in a
two-colour pattern; the built-in three are left out, and a fixed held-out set, the same for every run, is kept apart
for measuring. Every subject answers to one identifier: each LoRA is one subject's.
"""

from __future__ import annotations

import random
from itertools import permutations, product

from tunelab.errors import TunelabError
from tunelab.toyworld.subjects import SUBJECTS, Subject
from tunelab.toyworld.world import RESERVED_COLOURS, SHAPES, TWO_COLOUR_PATTERNS, Look

TOKEN = "sks"
HELD_OUT_COUNT = 16
SPLIT_SEED = "hyper-held-out"  # fixed: every run measures on the same held-out subjects


def subject_of(look: Look) -> Subject:
    return Subject(f"{look.shape}-{look.pattern}-{'-'.join(look.colours)}", TOKEN, look)


def all_subjects() -> list[Subject]:
    """Every procedural subject, in a fixed order: shape x ordered colour pair x pattern, less the built-in ones."""
    built_in = {subject.look for subject in SUBJECTS.values()}
    looks = [Look(shape, pair, pattern) for shape, pair, pattern in
             product(SHAPES, permutations(RESERVED_COLOURS, 2), TWO_COLOUR_PATTERNS)]
    return [subject_of(look) for look in looks if look not in built_in]


def held_out_subjects() -> list[Subject]:
    """The measuring set: never trained on by any run."""
    subjects = all_subjects()
    random.Random(SPLIT_SEED).shuffle(subjects)
    return subjects[:HELD_OUT_COUNT]


def training_subjects(count: int, seed: int) -> list[Subject]:
    """`count` subjects for pretraining, drawn by the run's seed from those not held out."""
    held_out = set(held_out_subjects())
    pool = [subject for subject in all_subjects() if subject not in held_out]
    if not 1 <= count <= len(pool):
        raise TunelabError(f"--subjects must be between 1 and {len(pool)} (the subjects not held out), got {count}")
    return random.Random(f"hyper-subjects/{seed}").sample(pool, count)
