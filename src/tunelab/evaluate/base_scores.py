"""Does the toyworld base follow prompts? Shape, colour, background, size and position accuracy on captions it never saw."""

from __future__ import annotations

import random

import numpy as np
import torch

from tunelab.evaluate.metrics import subject_fidelity
from tunelab.evaluate.sampling import sample_images
from tunelab.evaluate.scene_reading import background_flatness, crispness, read
from tunelab.toyworld.subjects import SUBJECTS
from tunelab.toyworld.world import (ATTRIBUTES, HELD_OUT, OBJECT_COLOURS, SHAPES, Look, World, caption, place, render,
                                    world_of_resolution)


def held_out_scenes(count: int, seed: int, world: World) -> list:
    rng = random.Random(seed)
    scenes = []
    for index in range(count):
        shape, colour, background = HELD_OUT[index % len(HELD_OUT)]
        scenes.append(place(rng, Look(shape, (colour,)), background, world=world))
    return scenes


def asked_attributes(scene) -> dict[str, str]:
    """What a scene's full caption asks for, attribute by attribute."""
    return {
        "shape": scene.look.shape,
        "colour": scene.look.colours[0],
        "background": scene.background,
        "size": scene.size,
        "position": scene.position,
    }


def world_of(pipeline) -> World:
    """The toyworld generation a pipeline draws, known by its image size."""
    return world_of_resolution(pipeline.unet.config.sample_size * pipeline.vae_scale_factor)


def measure_base(pipeline, count: int = 48, seed: int = 0, world: World | None = None) -> dict[str, float]:
    """Fraction of images whose reading matches each attribute asked for in the (full) caption, on scenes of
    `world` (default: the first generation of the pipeline's image size)."""
    scenes = held_out_scenes(count, seed, world or world_of(pipeline))
    images = sample_images(pipeline, [caption(scene) for scene in scenes], [seed + i for i in range(count)])
    hits = dict.fromkeys(ATTRIBUTES, 0)
    for scene, image in zip(scenes, images):
        reading, asked = read(image), asked_attributes(scene)
        for attribute in ATTRIBUTES:
            hits[attribute] += getattr(reading, attribute) == asked[attribute]
    return {f"{attribute}_accuracy": round(hits[attribute] / count, 3) for attribute in ATTRIBUTES}


def measure_class_prompts(pipeline, count: int = 24, seed: int = 0) -> dict[str, float]:
    """How the base draws a bare class prompt ("a circle", the prior every subject is tuned against): the shape
    asked, in one base colour (not a blend), in clean palette colours on a flat background."""
    shapes = [SHAPES[index % len(SHAPES)] for index in range(count)]
    images = sample_images(pipeline, [f"a {shape}" for shape in shapes], [seed + i for i in range(count)])
    readings = [read(image) for image in images]
    return {
        "class_shape_accuracy": round(float(np.mean([r.shape == shape for r, shape in zip(readings, shapes)])), 3),
        "class_base_colour": round(float(np.mean([r.colour in OBJECT_COLOURS for r in readings])), 3),
        "crisp_pixels": round(float(np.mean([crispness(r) for r in readings])), 3),
        "flat_background": round(float(np.mean([background_flatness(r) for r in readings])), 3),
    }


@torch.no_grad()
def measure_autoencoder(vae, world: World, count: int = 48, seed: int = 0) -> dict[str, float]:
    """What the autoencoder alone preserves, the ceiling for any model built on it: read-back accuracy of
    reconstructed held-out scenes (all five attributes right) and subject fidelity of reconstructed subject renders."""

    def reconstruct(images: list[np.ndarray]) -> list[np.ndarray]:
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)
        decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample  # (B, 3, H, W)
        return list(((decoded.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8))

    scenes = held_out_scenes(count, seed, world)
    readings = [read(image) for image in reconstruct([render(scene) for scene in scenes])]
    exact = [all(getattr(reading, name) == value for name, value in asked_attributes(scene).items()) for scene, reading in zip(scenes, readings)]
    scores = {"readback_accuracy": round(float(np.mean(exact)), 3)}
    for subject in SUBJECTS.values():
        renders = subject.renders(count // 2, seed=seed + 1, world=world)
        scores[f"{subject.name}_fidelity"] = round(subject_fidelity(reconstruct(renders), subject), 3)
    return scores
