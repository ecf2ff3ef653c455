"""Built-in model presets: small pipelines built from config, never downloaded.

`tiny-sd` keeps Stable Diffusion's structure (VAE + CLIP text encoder + UNet with
cross-attention, DDPM-trained epsilon schedule) at a few hundred thousand
parameters, so tests and examples train and sample in seconds on a CPU.
"""

from __future__ import annotations

from typing import Callable

import torch

from tunelab.errors import TunelabError


def build_tiny_sd(seed: int = 0):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tunelab.models.tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    # Each component gets its own seeded generator state so the build is deterministic.
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,  # latent side: 32 px images through a 2x VAE
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


PRESETS: dict[str, Callable[..., object]] = {"tiny-sd": build_tiny_sd}


def build_preset(name: str, seed: int = 0):
    try:
        builder = PRESETS[name]
    except KeyError:
        raise TunelabError(f"unknown preset {name!r}; built-in presets: {', '.join(sorted(PRESETS))}") from None
    return builder(seed=seed)
