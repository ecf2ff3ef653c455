"""Images for measuring: a pipeline, prompts and seeds -> uint8 arrays, the same way every time."""

from __future__ import annotations

import numpy as np
import torch

STEPS = 20
GUIDANCE = 5.0


@torch.no_grad()
def sample_images(pipeline, prompts: list[str], seeds: list[int], *, batch: int = 16, steps: int = STEPS, guidance: float = GUIDANCE) -> list[np.ndarray]:
    """One image per (prompt, seed): (H, W, 3) uint8 each."""
    images: list[np.ndarray] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        generators = [torch.Generator().manual_seed(seed) for seed in seeds[start : start + batch]]
        output = pipeline(
            prompt=chunk, generator=generators, num_inference_steps=steps, guidance_scale=guidance, output_type="np"
        ).images  # (b, H, W, 3) floats in [0, 1]
        images += list((np.clip(output, 0, 1) * 255).round().astype(np.uint8))
    return images
