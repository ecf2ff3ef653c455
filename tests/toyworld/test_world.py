"""toyworld's renderer, captions and subjects: what the exact metrics stand on."""

import random

import numpy as np
import pytest

from tunelab.evaluate.scene_reading import read
from tunelab.toyworld.pretrain import HELD_OUT, pretraining_scenes
from tunelab.toyworld.subjects import SUBJECTS, write_training_images
from tunelab.toyworld.world import BACKGROUND_COLOURS, OBJECT_COLOURS, RESOLUTION, caption, random_scene, render


def test_every_render_reads_back_as_the_scene_it_was_drawn_from():
    rng = random.Random(7)
    for _ in range(400):
        scene = random_scene(rng)
        reading = read(render(scene))
        assert (reading.shape, reading.colour, reading.background, reading.size, reading.position) == (
            scene.look.shape, scene.look.colours[0], scene.background, scene.size, scene.position)


def test_a_full_caption_names_every_attribute_and_dropped_parts_stay_optional():
    rng = random.Random(0)
    scene = random_scene(rng)
    full = caption(scene)
    for word in (scene.size, scene.look.colours[0], scene.look.shape, f"{scene.background} background"):
        assert word in full
    shortened = {caption(scene, rng) for _ in range(50)}
    assert len(shortened) > 3 and all(scene.look.shape in text and scene.look.colours[0] in text for text in shortened)


def test_held_out_combinations_never_appear_in_pretraining():
    seen = {(s.look.shape, s.look.colours[0], s.background) for s in pretraining_scenes(3000, seed=0)}
    assert not seen & set(HELD_OUT)
    assert len(seen) > 50  # the rest of the world is there


@pytest.mark.parametrize("name", sorted(SUBJECTS))
def test_subjects_are_new_to_the_base_and_their_renders_vary(name, tmp_path):
    subject = SUBJECTS[name]
    assert not set(subject.look.colours) & set(OBJECT_COLOURS + BACKGROUND_COLOURS)  # colours the base never drew
    folder = write_training_images(subject, tmp_path / name)
    images = [np.asarray(__import__("PIL.Image").Image.open(p)) for p in sorted(folder.glob("*.png"))]
    assert len(images) == 5 and all(image.shape == (RESOLUTION, RESOLUTION, 3) for image in images)
    readings = [read(image) for image in images]
    assert len({r.box for r in readings}) == 5 and len({r.background for r in readings}) > 1
    assert (folder / f"{name}_0.txt").read_text().strip() == subject.prompt
