"""The autoencoder's ceiling: a lossless autoencoder scores 1 everywhere, a lossy one less."""

from types import SimpleNamespace

import pytest
import torch

from tunelab.evaluate.base_scores import measure_autoencoder
from tunelab.toyworld.world import WORLDS


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
