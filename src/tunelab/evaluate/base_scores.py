"""Does the toyworld base follow prompts? Shape, colour, background, size and position accuracy on captions it never saw."""

from __future__ import annotations

import random

from tunelab.evaluate.sampling import sample_images
from tunelab.evaluate.scene_reading import read
from tunelab.toyworld.world import Look, caption, place

ATTRIBUTES = ("shape", "colour", "background", "size", "position")


def held_out_scenes(count: int, seed: int) -> list:
    from tunelab.toyworld.pretrain import HELD_OUT

    rng = random.Random(seed)
    scenes = []
    for index in range(count):
        shape, colour, background = HELD_OUT[index % len(HELD_OUT)]
        scenes.append(place(rng, Look(shape, (colour,)), background))
    return scenes


def measure_base(pipeline, count: int = 48, seed: int = 0) -> dict[str, float]:
    """Fraction of images whose reading matches each attribute asked for in the (full) caption."""
    scenes = held_out_scenes(count, seed)
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
