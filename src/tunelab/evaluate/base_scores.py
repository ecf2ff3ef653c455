"""Does the toyworld base follow prompts? Shape, colour, background, size and position accuracy on captions it never saw."""

from __future__ import annotations

import random

from tunelab.evaluate.sampling import sample_images
from tunelab.evaluate.scene_reading import read
from tunelab.toyworld.world import ATTRIBUTES, HELD_OUT, Look, World, caption, place, world_of_resolution


def held_out_scenes(count: int, seed: int, world: World) -> list:
    rng = random.Random(seed)
    scenes = []
    for index in range(count):
        shape, colour, background = HELD_OUT[index % len(HELD_OUT)]
        scenes.append(place(rng, Look(shape, (colour,)), background, world=world))
    return scenes


def world_of(pipeline) -> World:
    """The toyworld generation a pipeline draws, known by its image size."""
    return world_of_resolution(pipeline.unet.config.sample_size * pipeline.vae_scale_factor)


def measure_base(pipeline, count: int = 48, seed: int = 0) -> dict[str, float]:
    """Fraction of images whose reading matches each attribute asked for in the (full) caption."""
    scenes = held_out_scenes(count, seed, world_of(pipeline))
    images = sample_images(pipeline, [caption(scene) for scene in scenes], [seed + i for i in range(count)])
    hits = dict.fromkeys(ATTRIBUTES, 0)
    for scene, image in zip(scenes, images):
        reading = read(image)
        asked = {
            "shape": scene.look.shape,
            "colour": scene.look.colours[0],
            "background": scene.background,
            "size": scene.size,
            "position": scene.position,
        }
        for attribute in ATTRIBUTES:
            hits[attribute] += getattr(reading, attribute) == asked[attribute]
    return {f"{attribute}_accuracy": round(hits[attribute] / count, 3) for attribute in ATTRIBUTES}
