"""Stable Diffusion 1.x/2.x: CLIP prompt encoding, DDPM noising, epsilon or v-prediction targets."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from tunelab.models.family import Generators, NoisyBatch, draw


class StableDiffusionFamily:
    name = "sd"
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

    def __init__(self, pipeline):
        self.pipeline = pipeline
        # Training always uses the DDPM forward process of the model's own beta schedule.
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        self._alphas_cumprod = self.noise_scheduler.alphas_cumprod  # (T,)

    @property
    def base_model_version(self) -> str:
        """kohya's name for the base, as UIs read it from LoRA metadata."""
        # SD 2.x is the 1024-wide OpenCLIP text encoder; SD 1.x and the small test models are called sd_v1.
        return "sd_v2" if self.pipeline.unet.config.cross_attention_dim == 1024 else "sd_v1"

    @property
    def native_resolution(self) -> int:
        return self.pipeline.unet.config.sample_size * self.pipeline.vae_scale_factor

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
        return {"vae": self.pipeline.vae, "text_encoder": self.pipeline.text_encoder, "unet": self.pipeline.unet}

    def enable_gradient_checkpointing(self) -> None:
        self.pipeline.unet.enable_gradient_checkpointing()
        self.pipeline.text_encoder.gradient_checkpointing_enable()

    @torch.no_grad()
    def latent_distribution(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's Gaussian over latents: (mean, std), each (B, 4, H/f, W/f)."""
        vae = self.pipeline.vae
        pixel_values = pixel_values.to(device=vae.device, dtype=vae.dtype)  # (B, 3, H, W) in [-1, 1]
        distribution = vae.encode(pixel_values).latent_dist
        return distribution.mean, distribution.std

    def sample_latents(self, mean: torch.Tensor, std: torch.Tensor, generator: Generators) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        # Drawn as diffusers' DiagonalGaussianDistribution.sample draws, so cached and fresh agree exactly.
        noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return (mean + std * noise) * self.pipeline.vae.config.scaling_factor

    def encode_images(self, pixel_values: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        return self.sample_latents(*self.latent_distribution(pixel_values), generator)

    def encode_prompts(self, captions: list[str]) -> dict[str, torch.Tensor]:
        tokenizer = self.pipeline.tokenizer
        text_encoder = self._forward_module("text_encoder")
        ids = tokenizer(
            captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.pipeline.text_encoder.device)  # (B, 77)
        hidden = text_encoder(ids)[0]  # (B, 77, D)
        return {"encoder_hidden_states": hidden}

    def add_noise(self, latents: torch.Tensor, noise_offset: float, generator: Generators) -> NoisyBatch:
        batch_size, channels = latents.shape[:2]
        noise = draw(generator, batch_size, lambda g, n: torch.randn((n, *latents.shape[1:]), generator=g)).to(latents)
        if noise_offset:
            # Per-channel offset lets the model learn overall brightness (very dark or light images).
            offset = draw(generator, batch_size, lambda g, n: torch.randn((n, channels, 1, 1), generator=g)).to(latents)
            noise = noise + noise_offset * offset
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
