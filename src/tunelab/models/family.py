"""What the trainer needs from a model family, whatever its denoiser or objective."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from diffusers.utils.torch_utils import randn_tensor

from tunelab.config import flag_name
from tunelab.errors import TunelabError

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


class ModelFamily(Protocol):
    name: str  # the key techniques list their families by: "sd"
    title: str  # for people: "Stable Diffusion 1.x/2.x"
    # Dataclasses of `tunelab train` flags that only some families read (each with a `scope` for messages),
    # and the fields of those this family leaves unread -> why.
    train_options: tuple[type, ...]
    unread_options: dict[str, str]
    pipeline: Any
    denoiser_name: str  # "unet" or "transformer"
    text_encoder_names: tuple[str, ...]
    trainable_text_encoder_names: tuple[str, ...]  # those a technique may train (not a frozen-only T5)
    optional_text_encoder: str | None  # one the model works without (SD3's T5: --no-t5), else None
    prompt_weighting: bool  # generation encodes A1111-weighted prompts itself (else hands the text to the pipeline)
    negative_prompt: bool  # takes a negative prompt (classifier-free guidance)
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
    def pipeline_text_options(self) -> dict[str, Any]: ...  # what its pipeline takes to read a prompt as training does


# diffusers pipeline class -> the family that trains and samples it; the one list of families.
FAMILIES = {
    "StableDiffusionPipeline": "tunelab.models.sd:StableDiffusionFamily",
    "StableDiffusionXLPipeline": "tunelab.models.sdxl:StableDiffusionXLFamily",
    "FluxPipeline": "tunelab.models.flux:FluxFamily",
    "StableDiffusion3Pipeline": "tunelab.models.sd3:StableDiffusion3Family",
}


def family_class(pipeline_class_name: str) -> type:
    if pipeline_class_name not in FAMILIES:
        raise TunelabError(f"model family {pipeline_class_name} is not supported yet (supported: {', '.join(FAMILIES)})")
    module_name, class_name = FAMILIES[pipeline_class_name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def all_families() -> list[type]:
    return [family_class(name) for name in FAMILIES]


def option_groups() -> list[type]:
    """Every family-options dataclass, each once, in registry order (several families may share one)."""
    return list(dict.fromkeys(schema for family in all_families() for schema in family.train_options))


def options_of(family_options, schema: type):
    """The instance of `schema` among a run's family options ({schema: instance}, or one instance), else its defaults."""
    if isinstance(family_options, schema):
        return family_options
    found = (family_options or {}).get(schema) if isinstance(family_options, dict) else None
    return found if found is not None else schema()


def family_for(pipeline, options=None, family_options=None) -> ModelFamily:
    """The family of a loaded pipeline, by its class.

    `options` are the run's TrainOptions when training (families read the settings of their own
    objective from them, and refuse ones that do not apply) and `family_options` the run's instances of
    the families' option dataclasses ({schema: instance}); both None for generation and tools."""
    return family_class(type(pipeline).__name__)(pipeline, options, family_options)


def given_fields(options) -> list[str]:
    """Fields of a family-options instance that were set (a field left at its default, None for most, was not given)."""
    return [field.name for field in dataclasses.fields(options) if getattr(options, field.name) != field.default]


def check_family_options(family, family_options: dict[type, Any]) -> None:
    """Refuse options this family does not read (`--flow-shift` on Stable Diffusion, `--flux-guidance` on SD3),
    before any model loads."""
    for schema, options in family_options.items():
        given = given_fields(options)
        if not given:
            continue
        if schema not in family.train_options:
            raise TunelabError(f"{_as_typed(options, given[0])} applies to {schema.scope}; {family.title} models do not take it")
        unread = [name for name in given if name in family.unread_options]
        if unread:
            readers = [other.title for other in all_families() if schema in other.train_options and unread[0] not in other.unread_options]
            raise TunelabError(f"{_as_typed(options, unread[0])} applies to {' and '.join(readers)} models; {family.title} models "
                               f"do not take it ({family.unread_options[unread[0]]})")


def _as_typed(options, name: str) -> str:
    """The flag as the user typed it: --no-t5 for a switch turned off."""
    return flag_name(f"no_{name}") if getattr(options, name) is False else flag_name(name)


class VaeLatentsMixin:
    """What every family here shares: components by name, and VAE latents (scaled, and shifted where the
    VAE says so: Flux)."""

    pipeline: Any
    train_options: tuple[type, ...] = ()
    unread_options: dict[str, str] = {}
    optional_text_encoder: str | None = None
    negative_prompt = True

    @property
    def trainable_text_encoder_names(self) -> tuple[str, ...]:
        return self.text_encoder_names

    def module(self, name: str) -> torch.nn.Module:
        return getattr(self.pipeline, name)

    def tokenizer_for(self, text_encoder_name: str):
        """The tokenizer that feeds a text encoder (text_encoder <- tokenizer, text_encoder_2 <- tokenizer_2)."""
        return getattr(self.pipeline, text_encoder_name.replace("text_encoder", "tokenizer"))

    def pipeline_text_options(self) -> dict[str, Any]:
        """Arguments the diffusers pipeline takes beside the prompt to encode it as training does (none here; T5's
        length where there is a T5); training samples and generation pass them."""
        return {}

    def drop_text_encoder(self, name: str) -> None:
        """Take an optional text encoder and its tokenizer off the pipeline (their memory is freed)."""
        self.pipeline.register_modules(**{name: None, name.replace("text_encoder", "tokenizer"): None})

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
