"""Scores of a base and its parts: the autoencoder's ceiling, and how bare class prompts are drawn."""

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tunelab.evaluate.base_scores import measure_autoencoder, measure_class_prompts
from tunelab.toyworld.world import WORLDS, Look, place, render


class PoolingAutoencoder:
    """Encodes by average-pooling `factor`x`factor` pixels, decodes by repeating them (factor 1: lossless)."""

    def __init__(self, factor: int):
        self.factor = factor

    def encode(self, pixels):  # (B, 3, H, W) -> (B, 3, H/f, W/f)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=torch.nn.functional.avg_pool2d(pixels, self.factor)))

    def decode(self, latents):
        return SimpleNamespace(sample=latents.repeat_interleave(self.factor, 2).repeat_interleave(self.factor, 3))


@pytest.mark.parametrize("generation", sorted(WORLDS))
def test_a_lossless_autoencoder_keeps_every_scene_and_subject_and_a_blurring_one_loses_patterns(generation):
    world = WORLDS[generation]
    lossless = measure_autoencoder(PoolingAutoencoder(1), world, count=12)
    assert lossless == {"readback_accuracy": 1.0, "bullseye_fidelity": 1.0, "checker_fidelity": 1.0, "flag_fidelity": 1.0}
    blurred = measure_autoencoder(PoolingAutoencoder(4), world, count=12)
    assert blurred["bullseye_fidelity"] < 0.8 and blurred["readback_accuracy"] < 1.0


class DrawingPipeline:
    """Stands in for a base: draws each prompt's last word as a red shape (or always `shape`), optionally blurred."""

    def __init__(self, world, shape=None, blur=False):
        self.world, self.shape, self.blur = world, shape, blur

    def __call__(self, prompt, generator, **settings):
        images = []
        for text, seeded in zip(prompt, generator):
            rng = random.Random(seeded.initial_seed())
            image = render(place(rng, Look(self.shape or text.split()[-1], ("red",)), "gray", world=self.world)).astype(np.float32)
            if self.blur:  # a 3x3 box blur: soft edges in blended colours
                padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
                image = sum(padded[dy : dy + image.shape[0], dx : dx + image.shape[1]] for dy in range(3) for dx in range(3)) / 9
            images.append(image / 255)
        return SimpleNamespace(images=np.stack(images))  # (B, H, W, 3) in [0, 1], as output_type="np" gives


def test_class_prompt_scores_reward_the_asked_shape_in_clean_colours():
    world = WORLDS[2]
    faithful = measure_class_prompts(DrawingPipeline(world), count=8)
    assert faithful == {"class_shape_accuracy": 1.0, "class_base_colour": 1.0, "crisp_pixels": 1.0, "flat_background": 1.0}
    assert measure_class_prompts(DrawingPipeline(world, shape="square"), count=8)["class_shape_accuracy"] == 0.25
    assert measure_class_prompts(DrawingPipeline(world, blur=True), count=8)["crisp_pixels"] < 0.8
