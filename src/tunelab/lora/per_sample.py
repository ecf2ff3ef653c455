"""Many subjects' LoRAs in one forward pass: each batch item goes through its own subject's weight change.

The fixed-basis LoRAs of a batch differ only in their cores, so every adapted layer adds U (C_b (D x)) to its
output, with C_b the core of item b. Forward hooks on the model's own Linear layers do it; nothing is copied.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from tunelab.errors import TunelabError
from tunelab.lora.fixed_basis import FixedBasis


def _adding_hook(down: torch.Tensor, up: torch.Tensor, cores: torch.Tensor):
    """A forward hook adding U C_b D x to a Linear's output; cores (B, r, r) per batch item."""
    def hook(module, inputs, output):
        x = inputs[0]  # (B, ..., in)
        batch = x.shape[0]
        if cores.shape[0] != batch:
            raise TunelabError(f"{cores.shape[0]} subjects' cores for a batch of {batch}")
        projected = x.reshape(batch, -1, x.shape[-1]) @ down.T.to(x.dtype)  # (B, N, r)
        mixed = torch.einsum("bnr,bsr->bns", projected, cores.to(x.dtype))  # (B, N, r): C_b applied per item
        return output + (mixed @ up.T.to(x.dtype)).reshape(output.shape)  # (B, ..., out)
    return hook


@contextmanager
def per_sample_loras(modules: dict[str, torch.nn.Module], basis: FixedBasis, cores: torch.Tensor) -> Iterator[None]:
    """Within the block, the basis's layers of `modules` (key -> Linear) add each batch item's LoRA;
    cores (B, L, r, r), batch item b using cores[b]. Gradients reach the cores."""
    missing = [key for key in basis.keys if key not in modules]
    if missing:
        raise TunelabError(f"the model has no layer {missing[0]} (the basis was made for another model)")
    handles = []
    try:
        for index, (key, down, up) in enumerate(zip(basis.keys, basis.downs, basis.ups)):
            handles.append(modules[key].register_forward_hook(_adding_hook(down, up, cores[:, index])))
        yield
    finally:
        for handle in handles:
            handle.remove()
