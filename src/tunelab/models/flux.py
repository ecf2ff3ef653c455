"""Flux.1 (dev and schnell): a rectified-flow transformer on packed latents.

Training objective (flow matching): for a clean latent x and noise n at sigma in (0, 1),

    noisy  = (1 - sigma) * x + sigma * n        target = n - x

with sigma drawn by --timestep-sampling (sigmoid of a standard normal by default: the logit-normal
of SD3 / kohya's "sigmoid"), optionally shifted toward noise by --flow-shift s:
sigma' = s * sigma / (1 + (s - 1) * sigma). "flux_shift" uses the resolution-dependent shift Flux.1
samples with. The dev model's guidance embedding gets --flux-guidance (default 1.0); schnell has none.

Prompts: CLIP-L's pooled vector and T5's token sequence. T5 is always frozen, so each distinct
caption goes through it once and its output is kept for the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from tunelab.config import option
from tunelab.errors import TunelabError
from tunelab.models.family import Generators, NoisyBatch, VaeLatentsMixin, draw, draw_noise, tokenize
from tunelab.models.sd import StableDiffusionFamily

TimestepSampling = Literal["sigmoid", "uniform", "flux_shift"]
# Flux.1-dev reads 512 T5 tokens (schnell 256); a smaller tokenizer (the tiny preset) caps it.
MAX_T5_TOKENS = 512


@dataclass
class FlowMatchingOptions:
    """`tunelab train` options only flow-matching models read; None: not given (the defaults below apply)."""

    timestep_sampling: TimestepSampling | None = option(
        "flow-matching models (Flux.1): how sigma is drawn; sigmoid (logit-normal, the default), uniform, "
        "or flux_shift (Flux.1's resolution-dependent shift)", default=None,
    )
    flow_shift: float | None = option("flow-matching models: shift sigma toward noise, s*sigma/(1+(s-1)*sigma), e.g. 3 (default 1: none)", default=None)
    flux_guidance: float | None = option("Flux.1-dev: value fed to the guidance embedding while training (default 1.0)", default=None)

    def __post_init__(self):
        # Checked where the options are made, so a bad value is refused before any model loads.
        if self.flow_shift is not None and self.flow_shift <= 0:
            raise TunelabError(f"--flow-shift must be positive, got {self.flow_shift}")


class FluxFamily(VaeLatentsMixin):
    name = "flux"
    title = "Flux.1"
    train_options = FlowMatchingOptions
    options_scope = "flow-matching models (Flux.1)"
    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder", "text_encoder_2")
    base_model_version = "flux1"
    prompt_weighting = False  # generation hands the prompt text to FluxPipeline as written
    lora_targets = {
        "transformer": {
            "attention": ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
            "feedforward": ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp"),
        },
        # CLIP-L only, as kohya's Flux LoRAs; T5 stays frozen.
        "text_encoder": StableDiffusionFamily.lora_targets["text_encoder"],
    }

    def __init__(self, pipeline, options=None, family_options: FlowMatchingOptions | None = None):
        self.pipeline = pipeline
        if options is not None:
            self.check_options(options)
        flow = family_options or FlowMatchingOptions()
        self.timestep_sampling = flow.timestep_sampling or "sigmoid"
        self.flow_shift = flow.flow_shift if flow.flow_shift is not None else 1.0
        self.guidance = flow.flux_guidance if flow.flux_guidance is not None else 1.0
        self._t5_cache: dict[str, torch.Tensor] = {}  # caption -> (L, D)

    @staticmethod
    def check_options(options) -> None:
        """TrainOptions that make no sense here, refused before the model loads."""
        if options.min_snr_gamma:
            raise TunelabError("--min-snr-gamma weights DDPM timesteps (SD, SDXL); Flux.1 is trained with flow matching")

    @property
    def native_resolution(self) -> int:
        return self.pipeline.default_sample_size * self.pipeline.vae_scale_factor

    @property
    def max_sequence_length(self) -> int:
        return min(MAX_T5_TOKENS, self.pipeline.tokenizer_2.model_max_length)

    def enable_gradient_checkpointing(self) -> None:
        self.pipeline.transformer.enable_gradient_checkpointing()
        self.pipeline.text_encoder.gradient_checkpointing_enable()

    def encode_text(self, name: str, ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """CLIP: (hidden states, pooled (B, 768)); T5: (hidden states (B, L, 4096), None)."""
        output = self._forward_module(name)(ids, attention_mask=attention_mask)
        return output[0], getattr(output, "pooler_output", None)

    def encode_prompts(self, captions: list[str]) -> dict[str, torch.Tensor]:
        clip_ids = tokenize(self.pipeline.tokenizer, captions).to(self.pipeline.text_encoder.device)  # (B, 77)
        _, pooled = self.encode_text("text_encoder", clip_ids)  # (B, P); CLIP-L may carry a LoRA
        # T5 is always frozen: each distinct caption goes through it once.
        missing = [caption for caption in dict.fromkeys(captions) if caption not in self._t5_cache]
        if missing:
            ids = tokenize(self.pipeline.tokenizer_2, missing, self.max_sequence_length).to(self.pipeline.text_encoder_2.device)
            with torch.no_grad():
                sequence, _ = self.encode_text("text_encoder_2", ids)  # (b, L, D)
            self._t5_cache.update(zip(missing, sequence))
        sequence = torch.stack([self._t5_cache[caption] for caption in captions])  # (B, L, D)
        return {"encoder_hidden_states": sequence, "pooled_projections": pooled}

    def _shift_for(self, latents: torch.Tensor) -> float:
        if self.timestep_sampling != "flux_shift":
            return self.flow_shift
        # The resolution-dependent shift Flux.1 samples with (mu linear in the packed image length).
        config = self.pipeline.scheduler.config
        tokens = (latents.shape[-2] // 2) * (latents.shape[-1] // 2)
        mu = calculate_shift(tokens, config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift)
        return math.exp(mu)

    def sample_sigmas(self, latents: torch.Tensor, generator: Generators) -> torch.Tensor:
        """sigma in (0, 1) per sample: (B,)."""
        batch_size = latents.shape[0]
        if self.timestep_sampling == "uniform":
            sigmas = draw(generator, batch_size, lambda g, n: torch.rand((n,), generator=g))
        else:
            sigmas = torch.sigmoid(draw(generator, batch_size, lambda g, n: torch.randn((n,), generator=g)))
        shift = self._shift_for(latents)
        return shift * sigmas / (1 + (shift - 1) * sigmas)

    def add_noise(self, latents: torch.Tensor, noise_offset: float, generator: Generators) -> NoisyBatch:
        noise = draw_noise(latents, noise_offset, generator)
        sigmas = self.sample_sigmas(latents, generator).to(latents)  # (B,)
        s = sigmas[:, None, None, None]
        noisy = (1 - s) * latents + s * noise  # (B, C, h, w)
        # The transformer's timestep is sigma (the pipeline passes t / 1000 for t = 1000 sigma).
        return NoisyBatch(noisy=noisy, timesteps=sigmas * 1000, target=noise - latents)

    def predict(self, batch: NoisyBatch, conditioning: dict[str, torch.Tensor]) -> torch.Tensor:
        transformer = self._forward_module("transformer")
        dtype = self.pipeline.transformer.dtype
        latents = batch.noisy.to(dtype)
        batch_size, channels, height, width = latents.shape  # (B, C, h, w)
        packed = FluxPipeline._pack_latents(latents, batch_size, channels, height, width)  # (B, h/2 * w/2, 4C)
        image_ids = FluxPipeline._prepare_latent_image_ids(batch_size, height // 2, width // 2, latents.device, dtype)
        sequence = conditioning["encoder_hidden_states"].to(dtype)  # (B, L, D)
        text_ids = torch.zeros(sequence.shape[1], 3, device=latents.device, dtype=dtype)
        guidance = None
        if self.pipeline.transformer.config.guidance_embeds:
            guidance = torch.full((batch_size,), self.guidance, device=latents.device, dtype=torch.float32)
        output = transformer(
            hidden_states=packed,
            timestep=(batch.timesteps / 1000).to(dtype),
            guidance=guidance,
            pooled_projections=conditioning["pooled_projections"].to(dtype),
            encoder_hidden_states=sequence,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]  # (B, h/2 * w/2, 4C)
        scale = self.pipeline.vae_scale_factor
        return FluxPipeline._unpack_latents(output, height * scale, width * scale, scale)  # (B, C, h, w)

    def loss_weights(self, timesteps: torch.Tensor, min_snr_gamma: float | None) -> torch.Tensor:
        """Uniform: the timestep distribution already carries the weighting (SD3's "none" scheme)."""
        return torch.ones(timesteps.shape, device=timesteps.device)
