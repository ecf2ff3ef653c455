"""Flux.1 (dev and schnell): a rectified-flow transformer on packed latents.

Training objective: flow matching (models/flow_matching.py), with sigma drawn by --timestep-sampling
(sigmoid of a standard normal by default: the logit-normal of SD3 / kohya's "sigmoid"), optionally
shifted toward noise by --flow-shift s. "flux_shift" uses the resolution-dependent shift Flux.1
samples with. The dev model's guidance embedding gets --flux-guidance (default 1.0); schnell has none.

Prompts: CLIP-L's pooled vector and T5's token sequence. T5 is always frozen, so each distinct
caption goes through it once and its output is kept for the run.
"""

from __future__ import annotations

import math

import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from tunelab.errors import TunelabError
from tunelab.models.family import Generators, NoisyBatch, VaeLatentsMixin, draw, options_of, tokenize
from tunelab.models.flow_matching import TIMESTEP_SCALE, CaptionCache, FlowMatchingNoise, FlowMatchingOptions
from tunelab.models.sd import StableDiffusionFamily

# Flux.1-dev reads 512 T5 tokens (schnell 256); a smaller tokenizer (the tiny preset) caps it.
MAX_T5_TOKENS = 512


class FluxFamily(FlowMatchingNoise, VaeLatentsMixin):
    name = "flux"
    title = "Flux.1"
    train_options = (FlowMatchingOptions,)
    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder", "text_encoder_2")
    base_model_version = "flux1"
    prompt_weighting = False  # generation hands the prompt text to FluxPipeline as written
    negative_prompt = False  # guidance-distilled: no classifier-free guidance, so nothing to steer away from
    trainable_text_encoder_names = ("text_encoder",)  # CLIP-L; T5 stays frozen
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
        flow = options_of(family_options, FlowMatchingOptions)
        self.timestep_sampling = flow.timestep_sampling or "sigmoid"
        self.flow_shift = flow.flow_shift if flow.flow_shift is not None else 1.0
        self.guidance = flow.flux_guidance if flow.flux_guidance is not None else 1.0
        self._t5 = CaptionCache(self._encode_t5)  # T5 is always frozen

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

    def pipeline_text_options(self) -> dict[str, int]:
        return {"max_sequence_length": self.max_sequence_length}  # the pipeline's own default is not the run's

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
        sequence = self._t5.encode(captions)  # (B, L, D)
        return {"encoder_hidden_states": sequence, "pooled_projections": pooled}

    def encode_plain_text(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt as FluxPipeline encodes it: (T5 sequence (1, L, D), CLIP-L pooled vector (1, P))."""
        pipeline = self.pipeline
        embeds, pooled, _ = pipeline.encode_prompt(prompt=text, prompt_2=None, device=pipeline._execution_device,
                                                   max_sequence_length=self.max_sequence_length)
        return embeds, pooled

    def _encode_t5(self, captions: list[str]) -> torch.Tensor:
        ids = tokenize(self.pipeline.tokenizer_2, captions, self.max_sequence_length).to(self.pipeline.text_encoder_2.device)
        return self.encode_text("text_encoder_2", ids)[0]  # (b, L, D)

    def shift_for(self, latents: torch.Tensor) -> float:
        if self.timestep_sampling != "flux_shift":
            return self.flow_shift
        # The resolution-dependent shift Flux.1 samples with (mu linear in the packed image length).
        config = self.pipeline.scheduler.config
        tokens = (latents.shape[-2] // 2) * (latents.shape[-1] // 2)
        mu = calculate_shift(tokens, config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift)
        return math.exp(mu)

    def draw_sigmas(self, latents: torch.Tensor, generator: Generators) -> torch.Tensor:
        """Unshifted sigma in (0, 1) per sample: (B,)."""
        batch_size = latents.shape[0]
        if self.timestep_sampling == "uniform":
            return draw(generator, batch_size, lambda g, n: torch.rand((n,), generator=g))
        return torch.sigmoid(draw(generator, batch_size, lambda g, n: torch.randn((n,), generator=g)))

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
            timestep=(batch.timesteps / TIMESTEP_SCALE).to(dtype),
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
