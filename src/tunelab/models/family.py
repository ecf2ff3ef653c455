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


def draw_noise(latents: torch.Tensor, noise_offset: float, generator: Generators) -> torch.Tensor:
    """Gaussian noise like the latents (B, C, h, w), plus a per-channel offset when asked: it lets
    the model learn overall brightness (very dark or light images)."""
    batch_size, channels = latents.shape[:2]
    noise = draw(generator, batch_size, lambda g, n: torch.randn((n, *latents.shape[1:]), generator=g)).to(latents)
    if noise_offset:
        offset = draw(generator, batch_size, lambda g, n: torch.randn((n, channels, 1, 1), generator=g)).to(latents)
        noise = noise + noise_offset * offset
    return noise


@dataclass
class NoisyBatch:
    noisy: torch.Tensor  # (B, C, h, w) model input
    timesteps: torch.Tensor  # (B,)
    target: torch.Tensor  # (B, C, h, w) what the denoiser should predict


ALL_TECHNIQUES = frozenset({"lora", "dreambooth", "textual_inversion", "hypernetwork"})


class ModelFamily(Protocol):
    name: str
    pipeline: Any
    denoiser_name: str  # "unet" or "transformer"
    text_encoder_names: tuple[str, ...]
    techniques: frozenset[str]  # the techniques that make sense on this family; others are refused
    lora_targets: dict[str, dict[str, tuple[str, ...]]]  # component -> group -> module-name suffixes
    base_model_version: str  # kohya's ss_base_model_version

    @property
    def native_resolution(self) -> int: ...
    def module(self, name: str) -> torch.nn.Module: ...
    def tokenizer_for(self, text_encoder_name: str) -> Any: ...
    def set_module(self, name: str, module: torch.nn.Module) -> None: ...
    def frozen_modules(self) -> dict[str, torch.nn.Module]: ...
    def latent_distribution(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def sample_latents(self, mean: torch.Tensor, std: torch.Tensor, generator: Generators) -> torch.Tensor: ...
    def encode_images(self, pixel_values: torch.Tensor, generator: Generators = None) -> torch.Tensor: ...
    def encode_text(self, name: str, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]: ...
    def encode_prompts(self, captions: list[str]) -> dict[str, torch.Tensor]: ...
    def add_noise(self, latents: torch.Tensor, noise_offset: float, generator: Generators) -> NoisyBatch: ...
    def predict(self, batch: NoisyBatch, conditioning: dict[str, torch.Tensor]) -> torch.Tensor: ...
    def loss_weights(self, timesteps: torch.Tensor, min_snr_gamma: float | None) -> torch.Tensor: ...
    def enable_gradient_checkpointing(self) -> None: ...


FAMILIES = {
    "StableDiffusionPipeline": "tunelab.models.sd:StableDiffusionFamily",
    "StableDiffusionXLPipeline": "tunelab.models.sdxl:StableDiffusionXLFamily",
    "FluxPipeline": "tunelab.models.flux:FluxFamily",
}
FAMILY_NAMES = {"sd": "Stable Diffusion 1.x/2.x", "sdxl": "SDXL", "flux": "Flux.1"}
TECHNIQUE_NAMES = {"lora": "LoRA", "dreambooth": "DreamBooth (full fine-tuning)", "textual_inversion": "Textual Inversion",
                   "hypernetwork": "Hypernetwork"}


def family_for(pipeline, options=None) -> ModelFamily:
    """Pick the family from the pipeline class; new families register in FAMILIES.

    `options` are the run's TrainOptions when training (families read the settings of their own
    objective from them, and refuse ones that do not apply); None for generation and tools."""
    import importlib

    from tunelab.errors import TunelabError

    name = type(pipeline).__name__
    if name not in FAMILIES:
        raise TunelabError(f"model family {name} is not supported yet (supported: {', '.join(FAMILIES)})")
    module_name, class_name = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)(pipeline, options)


def require_technique(family, technique: str) -> None:
    """One clear line when a technique makes no sense on a family (e.g. a Hypernetwork on Flux)."""
    from tunelab.errors import TunelabError

    if technique not in family.techniques:
        supported = ", ".join(TECHNIQUE_NAMES[t] for t in sorted(family.techniques))
        raise TunelabError(
            f"{TECHNIQUE_NAMES[technique]} is not supported on {FAMILY_NAMES[family.name]} models (supported there: {supported})"
        )


class VaeLatentsMixin:
    """What every family here shares: components by name, and VAE latents (scaled, and shifted where the
    VAE says so: Flux)."""

    pipeline: Any

    def module(self, name: str) -> torch.nn.Module:
        return getattr(self.pipeline, name)

    def tokenizer_for(self, text_encoder_name: str):
        """The tokenizer that feeds a text encoder (text_encoder <- tokenizer, text_encoder_2 <- tokenizer_2)."""
        return getattr(self.pipeline, text_encoder_name.replace("text_encoder", "tokenizer"))

    def set_module(self, name: str, module: torch.nn.Module) -> None:
        # The trainer may hand back a wrapped module (e.g. DDP); the pipeline keeps the plain one.
        setattr(self, f"_wrapped_{name}", module)

    def _forward_module(self, name: str) -> torch.nn.Module:
        return getattr(self, f"_wrapped_{name}", None) or self.module(name)

    def frozen_modules(self) -> dict[str, torch.nn.Module]:
        names = ("vae", *self.text_encoder_names, self.denoiser_name)
        return {name: self.module(name) for name in names}

    @torch.no_grad()
    def latent_distribution(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's Gaussian over latents: (mean, std), each (B, C, H/f, W/f)."""
        vae = self.pipeline.vae
        pixel_values = pixel_values.to(device=vae.device, dtype=vae.dtype)  # (B, 3, H, W) in [-1, 1]
        distribution = vae.encode(pixel_values).latent_dist
        return distribution.mean, distribution.std

    def sample_latents(self, mean: torch.Tensor, std: torch.Tensor, generator: Generators) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        # Drawn as diffusers' DiagonalGaussianDistribution.sample draws, so cached and fresh agree exactly.
        noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        config = self.pipeline.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        return (mean + std * noise - shift) * config.scaling_factor

    def encode_images(self, pixel_values: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        return self.sample_latents(*self.latent_distribution(pixel_values), generator)


def tokenize(tokenizer, captions: list[str], max_length: int | None = None) -> torch.Tensor:
    """Token ids padded (and cut) to the encoder's fixed length: (B, L)."""
    length = max_length or tokenizer.model_max_length
    return tokenizer(captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
