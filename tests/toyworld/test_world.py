"""toyworld's renderer, captions and subjects, in each generation: what the exact metrics stand on."""

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tunelab.toyworld
from tunelab.evaluate.scene_reading import read
from tunelab.toyworld.pretrain import pretraining_scenes
from tunelab.toyworld.subjects import SUBJECTS, write_training_images
from tunelab.toyworld.world import (ANCHORS, BACKGROUND_COLOURS, HELD_OUT, OBJECT_COLOURS, POSITIONS, RESERVED_COLOURS,
                                    TWO_COLOUR_PATTERNS, WORLD, WORLDS, Look, caption, place, random_scene, render)

GENERATIONS = sorted(WORLDS)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_every_render_reads_back_as_the_scene_it_was_drawn_from(generation):
    world, rng = WORLDS[generation], random.Random(7)
    for _ in range(400):
        scene = random_scene(rng, world)
        image = render(scene)
        assert image.shape == (world.resolution, world.resolution, 3)
        reading = read(image)
        assert (reading.shape, reading.background, reading.size, reading.position) == (
            scene.look.shape, scene.background, scene.size, scene.position)
        assert reading.colour in scene.look.colours  # a two-coloured object reads as one of its colours


@pytest.mark.parametrize("generation", [g for g in GENERATIONS if WORLDS[g].placement == "anchored"])
def test_anchored_generations_put_each_object_plainly_where_its_position_word_says(generation):
    world, rng = WORLDS[generation], random.Random(3)
    for where in POSITIONS:
        for size in world.sizes:
            for _ in range(40):
                scene = place(rng, Look("square", ("red",)), "black", size=size, position=where, world=world)
                anchor_x, anchor_y = (a * world.resolution for a in ANCHORS[where])
                x, y = scene.centre
                # near its anchor, so two positions never blur into each other along a diagonal
                assert abs(x - anchor_x) <= world.jitter * world.resolution + 2 and abs(y - anchor_y) <= world.jitter * world.resolution + 2
                x0, y0, side = scene.box
                assert x0 >= 1 and y0 >= 1 and x0 + side <= world.resolution - 1 and y0 + side <= world.resolution - 1
    random_positions = {random_scene(rng, world).position for _ in range(200)}
    assert random_positions == set(POSITIONS)


def test_a_full_caption_names_every_attribute_and_dropped_parts_stay_optional():
    rng = random.Random(0)
    scene = random_scene(rng, WORLDS[1])
    full = caption(scene)
    for word in (scene.size, scene.look.colours[0], scene.look.shape, f"{scene.background} background"):
        assert word in full
    shortened = {caption(scene, rng) for _ in range(50)}
    assert len(shortened) > 3 and all(scene.look.shape in text and scene.look.colours[0] in text for text in shortened)


def test_generation_2_captions_sometimes_leave_out_the_colour_so_a_bare_class_prompt_is_trained():
    rng = random.Random(1)
    scene = random_scene(rng, WORLDS[2])
    shortened = [caption(scene, rng) for _ in range(400)]
    without_colour = [text for text in shortened if scene.look.colours[0] not in text]
    assert 0.1 < len(without_colour) / len(shortened) < 0.3
    assert f"a {scene.look.shape}" in shortened  # everything dropped: the class prompt itself
    assert all(scene.look.shape in text for text in shortened)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_held_out_combinations_never_appear_in_pretraining(generation):
    scenes = pretraining_scenes(3000, seed=0, world=WORLDS[generation])
    seen = {(s.look.shape, colour, s.background) for s in scenes for colour in s.look.colours}
    assert not seen & set(HELD_OUT)
    assert len(seen) > 50  # the rest of the world is there


def test_generation_4_shows_patterns_and_every_colour_but_never_a_subjects_pair():
    """Half its objects are two-coloured: the base learns to draw patterns and the reserved colours, while the pair of
    reserved colours every subject is made of stays new (and the procedural subjects' pairs with it)."""
    world = WORLDS[4]
    scenes = pretraining_scenes(4000, seed=0, world=world)
    patterned = [s for s in scenes if len(s.look.colours) == 2]
    assert 0.45 < len(patterned) / len(scenes) < 0.55
    assert {s.look.pattern for s in patterned} == set(TWO_COLOUR_PATTERNS)
    assert {c for s in patterned for c in s.look.colours} == set(OBJECT_COLOURS + RESERVED_COLOURS)
    assert all(sum(c in RESERVED_COLOURS for c in s.look.colours) <= 1 and s.background not in s.look.colours for s in patterned)
    assert all(set(subject.look.colours) <= set(RESERVED_COLOURS) for subject in SUBJECTS.values())
    rng = random.Random(0)
    captions = [caption(s, rng) for s in patterned[:200]]
    named = [text for text, s in zip(captions, patterned) if " ".join(s.look.colours) in text]
    assert 0.7 < len(named) / len(captions) < 0.9  # both colours named whenever the colour is kept (0.8)
    assert all(s.look.pattern not in text for text, s in zip(captions, patterned))
    solid = {(s.look.shape, s.look.colours, s.background) for s in random.Random(5).sample(scenes, 50) if len(s.look.colours) == 1}
    assert solid and all(colours[0] in OBJECT_COLOURS for _, colours, _ in solid)


@pytest.mark.parametrize("generation", GENERATIONS)
@pytest.mark.parametrize("name", sorted(SUBJECTS))
def test_subjects_are_new_to_the_base_and_their_renders_vary(name, generation, tmp_path):
    subject, world = SUBJECTS[name], WORLDS[generation]
    assert not set(subject.look.colours) & set(OBJECT_COLOURS + BACKGROUND_COLOURS)  # colours the base never drew
    folder = write_training_images(subject, tmp_path / name, world=world)
    images = [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]
    assert len(images) == 5 and all(image.shape == (world.resolution, world.resolution, 3) for image in images)
    readings = [read(image) for image in images]
    assert len({r.box for r in readings}) == 5 and len({r.background for r in readings}) > 1
    assert (folder / f"{name}_0.txt").read_text().strip() == subject.prompt


def test_the_shipped_base_draws_the_world_that_scenes_default_to():
    base = Path(tunelab.toyworld.__file__).parent / "base"
    record = json.loads((base / "pretraining.json").read_text())
    assert record["recipe"].get("generation", 1) == WORLD.generation
    vae = json.loads((base / "vae" / "config.json").read_text())
    unet = json.loads((base / "unet" / "config.json").read_text())
    assert unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1) == WORLD.resolution


def test_generation_5_draws_generation_4s_scenes_with_shorter_captions():
    """Its base learns the bare class prompt ("a circle") it is asked in every prior-preservation run: a caption with
    no optional part is 1% of generation 4's, 5% of generation 5's; the images are the same world's."""
    four, five = WORLDS[4], WORLDS[5]
    scenes = pretraining_scenes(2000, seed=0, world=five)
    assert [render(s).tobytes() for s in scenes[:50]] == [render(s).tobytes() for s in pretraining_scenes(50, seed=0, world=four)]

    def bare_share(world):
        rng = random.Random(1)
        captions = [caption(replace(s, world=world), rng) for s in scenes]
        return sum(text == f"a {s.look.shape}" for text, s in zip(captions, scenes)) / len(scenes)

    assert bare_share(four) < 0.02 and 0.035 < bare_share(five) < 0.07


def test_generation_6_is_generation_5s_world():
    """Generation 6 retrains only generation 5's decoder: its scenes and captions must be generation 5's, so the
    denoiser it keeps is asked what it learned."""
    five, six = WORLDS[5], WORLDS[6]
    assert replace(six, generation=5) == five
    scenes = pretraining_scenes(50, seed=3, world=six)
    assert [render(s).tobytes() for s in scenes] == [render(s).tobytes() for s in pretraining_scenes(50, seed=3, world=five)]
    rng_five, rng_six = random.Random(2), random.Random(2)
    assert [caption(replace(s, world=five), rng_five) for s in scenes] == [caption(s, rng_six) for s in scenes]
