"""The quality metrics, calibrated on renders: real subject renders score high, what the base draws scores low."""

import random

import numpy as np
import pytest

from tunelab.evaluate.metrics import class_preservation, diversity, prompt_fidelity, subject_fidelity
from tunelab.toyworld.subjects import SUBJECTS
from tunelab.toyworld.world import OBJECT_COLOURS, WORLD, WORLDS, Look, place, render


def class_renders(subject, count, seed=0, world=WORLD):
    """What the base draws for the class prompt: the class shape, solid, in base colours."""
    rng = random.Random(seed)
    return [render(place(rng, Look(subject.class_word, (rng.choice(OBJECT_COLOURS),)), "black", world=world)) for _ in range(count)]


@pytest.mark.parametrize("generation", sorted(WORLDS))
@pytest.mark.parametrize("name", sorted(SUBJECTS))
def test_held_out_renders_score_high_and_class_members_score_far_lower(name, generation):
    subject, world = SUBJECTS[name], WORLDS[generation]
    held_out = [render(scene) for scene in subject.scenes(24, seed=1, world=world)]
    assert subject_fidelity(held_out, subject) >= 0.9
    assert subject_fidelity(class_renders(subject, 24, world=world), subject) <= 0.3


def test_subject_fidelity_drops_with_wrong_pattern_or_wrong_shape():
    bullseye = SUBJECTS["bullseye"]
    rng = random.Random(3)
    right = [render(place(rng, bullseye.look, "black")) for _ in range(8)]
    solid_same_colours = [render(place(rng, Look("circle", ("orange",)), "black")) for _ in range(8)]
    wrong_shape = [render(place(rng, Look("square", bullseye.look.colours, "rings"), "black")) for _ in range(8)]
    assert subject_fidelity(right, bullseye) > subject_fidelity(solid_same_colours, bullseye) + 0.2
    assert subject_fidelity(right, bullseye) > subject_fidelity(wrong_shape, bullseye) + 0.15


def test_prompt_fidelity_counts_the_attributes_asked_for():
    rng = random.Random(1)
    scenes = [place(rng, SUBJECTS["checker"].look, background) for background in ("gray", "white", "blue", "black")]
    images = [render(scene) for scene in scenes]
    assert prompt_fidelity(images, [{"background": s.background, "position": s.position} for s in scenes]) == 1.0
    assert prompt_fidelity(images, [{"background": "gray"}] * 4) == 0.25


def test_class_preservation_is_about_the_class_not_the_subject():
    subject = SUBJECTS["flag"]
    assert class_preservation(class_renders(subject, 10), subject) == 1.0
    assert class_preservation([render(scene) for scene in subject.scenes(10, seed=2)], subject) == 0.0


def test_diversity_is_zero_for_copies_and_grows_with_variety():
    subject = SUBJECTS["bullseye"]
    one = render(subject.scenes(1, seed=3)[0])
    assert diversity([one, one.copy(), one.copy()]) == 0.0
    varied = [render(scene) for scene in subject.scenes(6, seed=4)]
    assert diversity(varied) > 0.2
    assert np.isfinite(diversity(varied))


def test_near_colours_earn_partial_credit_far_ones_none():
    bullseye = SUBJECTS["bullseye"]  # orange and purple rings
    rng = random.Random(5)
    near = [render(place(rng, Look("circle", ("yellow", "blue"), "rings"), "black")) for _ in range(6)]
    far = [render(place(rng, Look("circle", ("green", "white"), "rings"), "black")) for _ in range(6)]
    assert subject_fidelity(far, bullseye) == 0.0
    assert 0.05 < subject_fidelity(near, bullseye) < 0.5
