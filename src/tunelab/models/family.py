"""What the trainer needs from a model family, whatever its denoiser or objective."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


# One generator for the whole batch, or one per sample: then a sample's noise depends on that
# sample alone, whatever batch or process it lands in.
Generators = torch.Generator | list[torch.Generator] | None


def draw(generator: Generators, batch_size: int, sample) -> torch.Tensor:
    """`sample(generator, n)` -> a tensor with n rows; drawn per sample when given a generator per sample."""
    if isinstance(generator, list):
        return torch.cat([sample(one, 1) for one in generator])
    return sample(generator, batch_size)


@dataclass
class NoisyBatch:
    noisy: torch.Tensor  # (B, C, h, w) model input
    timesteps: torch.Tensor  # (B,)
    target: torch.Tensor  # (B, C, h, w) what the denoiser should predict


class ModelFamily(Protocol):
    name: str
    pipeline: Any
    denoiser_name: str  # "unet" or "transformer"
    text_encoder_names: tuple[str, ...]

    @property
    def native_resolution(self) -> int: ...
    def module(self, name: str) -> torch.nn.Module: ...
    def tokenizer_for(self, text_encoder_name: str) -> Any: ...
    def set_module(self, name: str, module: torch.nn.Module) -> None: ...
    def frozen_modules(self) -> dict[str, torch.nn.Module]: ...
    def latent_distribution(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def sample_latents(self, mean: torch.Tensor, std: torch.Tensor, generator: Generators) -> torch.Tensor: ...
    def encode_images(self, pixel_values: torch.Tensor, generator: Generators = None) -> torch.Tensor: ...
    def encode_prompts(self, captions: list[str]) -> dict[str, torch.Tensor]: ...
    def add_noise(self, latents: torch.Tensor, noise_offset: float, generator: Generators) -> NoisyBatch: ...
    def predict(self, batch: NoisyBatch, conditioning: dict[str, torch.Tensor]) -> torch.Tensor: ...
    def loss_weights(self, timesteps: torch.Tensor, min_snr_gamma: float | None) -> torch.Tensor: ...
    def enable_gradient_checkpointing(self) -> None: ...


def family_for(pipeline) -> ModelFamily:
    """Pick the family from the pipeline class; new families register here."""
    from tunelab.errors import TunelabError
    from tunelab.models.sd import StableDiffusionFamily

    families = {"StableDiffusionPipeline": StableDiffusionFamily}
    name = type(pipeline).__name__
    if name not in families:
        raise TunelabError(f"model family {name} is not supported yet (supported: {', '.join(families)})")
    return families[name](pipeline)
