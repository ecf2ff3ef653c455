"""Encode each distinct training image with the VAE once (kohya's cache_latents).

The cache keeps the VAE's latent distribution, not one sample of it, and draws a
fresh sample every step exactly as the uncached path does, so a run with the
cache gives the same result as one without. Keys are the pixels themselves, so
flipped or differently cropped versions of an image are cached separately and
stay correct.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext

import torch


class LatentCache:
    def __init__(self, family, on_miss=nullcontext):
        self.family = family
        self.on_miss = on_miss  # context around the VAE's work (e.g. bringing an offloaded VAE to the GPU)
        self._store: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # pixels digest -> (mean, std), (4, h, w) each

    def __len__(self) -> int:
        return len(self._store)

    def encode_images(self, pixel_values: torch.Tensor, generator=None) -> torch.Tensor:
        keys = [hashlib.sha1(image.cpu().numpy().tobytes()).hexdigest() for image in pixel_values]
        missing = [index for index, key in enumerate(keys) if key not in self._store]
        if missing:
            with self.on_miss():
                means, stds = self.family.latent_distribution(pixel_values[missing])
            for index, mean, std in zip(missing, means, stds):
                self._store[keys[index]] = (mean, std)
        mean = torch.stack([self._store[key][0] for key in keys])  # (B, 4, h, w)
        std = torch.stack([self._store[key][1] for key in keys])
        return self.family.sample_latents(mean, std, generator)
