"""Stable Diffusion 1.x/2.x: CLIP prompt encoding, DDPM noising, epsilon or v-prediction targets."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from tunelab.errors import TunelabError
from tunelab.models.family import Generators, NoisyBatch, VaeLatentsMixin, draw, draw_noise, tokenize

class StableDiffusionFamily(VaeLatentsMixin):
    name = "sd"
    title = "Stable Diffusion 1.x/2.x"
    train_options = ()  # every option SD reads is a TrainOptions field
    denoiser_name = "unet"
    text_encoder_names = ("text_encoder",)
    # Module-name suffixes a LoRA may target, per component and group (PEFT matches on suffix).
    lora_targets = {
        "unet": {
            "attention": ("to_q", "to_k", "to_v", "to_out.0"),
            "feedforward": ("ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"),
            "conv": ("conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv"),
        },
        "text_encoder": {
            "attention": ("q_proj", "k_proj", "v_proj", "out_proj"),
            "feedforward": ("fc1", "fc2"),
        },
    }

    prompt_weighting = True  # generation encodes A1111-weighted prompts itself (generate/prompt_encoding.py)

    def __init__(self, pipeline, options=None, family_options=None):
        self.pipeline = pipeline
        # Training always uses the DDPM forward process of the model's own beta schedule.
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        self._alphas_cumprod = self.noise_scheduler.alphas_cumprod  # (T,)

    @staticmethod
    def check_options(options) -> None:
        """Every TrainOptions field applies to Stable Diffusion."""

    @property
    def base_model_version(self) -> str:
        """kohya's name for the base, as UIs read it from LoRA metadata."""
        # SD 2.x is the 1024-wide OpenCLIP text encoder; SD 1.x and the small test models are called sd_v1.
        return "sd_v2" if self.pipeline.unet.config.cross_attention_dim == 1024 else "sd_v1"

    @property
    def native_resolution(self) -> int:
        return self.pipeline.unet.config.sample_size * self.pipeline.vae_scale_factor

    def enable_gradient_checkpointing(self) -> None:
        self.pipeline.unet.enable_gradient_checkpointing()
        for name in self.text_encoder_names:
            self.module(name).gradient_checkpointing_enable()

    def empty_negative_is_zeros(self) -> bool:
        """Whether the model's pipeline conditions an absent negative prompt on zero vectors rather than on
        the empty text's encoding (Stable Diffusion's encodes the empty text)."""
        return False

    def encode_text(self, name: str, ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """(hidden states (B, 77, D), pooled or None) of one text encoder, as the denoiser takes them."""
        return self._forward_module(name)(ids, attention_mask=attention_mask)[0], None

    def encode_prompts(self, captions: list[str]) -> dict[str, torch.Tensor]:
        ids = tokenize(self.pipeline.tokenizer, captions).to(self.pipeline.text_encoder.device)  # (B, 77)
        hidden, _ = self.encode_text("text_encoder", ids)  # (B, 77, D)
        return {"encoder_hidden_states": hidden}

    def add_noise(self, latents: torch.Tensor, noise_offset: float, generator: Generators) -> NoisyBatch:
        batch_size = latents.shape[0]
        noise = draw_noise(latents, noise_offset, generator)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = draw(generator, batch_size, lambda g, n: torch.randint(0, steps, (n,), generator=g)).to(latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ValueError(f"unsupported prediction type {self.prediction_type}")
        return NoisyBatch(noisy=noisy, timesteps=timesteps, target=target)

    def predict(self, batch: NoisyBatch, conditioning: dict[str, torch.Tensor]) -> torch.Tensor:
        unet = self._forward_module("unet")
        # A text encoder trained under mixed precision returns fp32 (accelerate's wrapper); a frozen denoiser,
        # which runs outside autocast, needs its own dtype. Under autocast the cast changes nothing.
        conditioning = {key: value.to(self.pipeline.unet.dtype) for key, value in conditioning.items()}
        return unet(batch.noisy, batch.timesteps, **conditioning, return_dict=False)[0]

    def loss_weights(self, timesteps: torch.Tensor, min_snr_gamma: float | None) -> torch.Tensor:
        """Min-SNR-gamma weighting (Hang et al. 2023); ones when disabled."""
        if not min_snr_gamma:
            return torch.ones(timesteps.shape, device=timesteps.device)
        alphas = self._alphas_cumprod.to(timesteps.device)[timesteps]  # (B,)
        snr = alphas / (1.0 - alphas)
        clipped = torch.clamp(snr, max=min_snr_gamma)
        # For v-prediction the loss is already scaled by (snr + 1) relative to epsilon.
        return clipped / (snr + 1.0) if self.prediction_type == "v_prediction" else clipped / snr
