"""Helpers for the LoRA-tool tests: known weight changes, random LoRAs, a fixed denoiser probe."""

from __future__ import annotations

import torch

from tunelab.formats.lora_set import LoraModule, LoraSet
from tunelab.lora.modules import adaptable_modules, is_spatial_conv

PROMPT = "a photo of sks toy"


def add_low_rank_changes(pipeline, rank: int, scale: float = 0.05, seed: int = 0, keys=None) -> dict[str, torch.Tensor]:
    """W += a random rank-`rank` matrix for each chosen adaptable module (all by default); returns the changes."""
    generator = torch.Generator().manual_seed(seed)
    changes = {}
    with torch.no_grad():
        for key, module in adaptable_modules(pipeline).items():
            if keys is not None and key not in keys:
                continue
            weight = module.weight  # (out, in[, kh, kw])
            left = torch.randn(weight.shape[0], rank, generator=generator)  # (out, r)
            right = torch.randn(rank, weight[0].numel(), generator=generator)  # (r, in*kh*kw)
            change = (left @ right).reshape(weight.shape) * scale / rank
            weight += change
            changes[key] = change
    return changes


def add_full_rank_noise(pipeline, scale: float = 0.02, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in adaptable_modules(pipeline).values():
            module.weight += torch.randn(module.weight.shape, generator=generator) * scale


def random_lora(pipeline, keys, rank: int, alpha: float, seed: int = 0, scale: float = 0.3) -> LoraSet:
    """Random factors for the given modules of a pipeline, shaped as trainers write them."""
    generator = torch.Generator().manual_seed(seed)
    modules = adaptable_modules(pipeline)
    lora = {}
    for key in keys:
        weight = modules[key].weight
        kernel = [1, 1] if weight.dim() == 4 else []
        lora[key] = LoraModule(
            torch.randn(rank, *weight.shape[1:], generator=generator) * scale,  # (r, in[, kh, kw])
            torch.randn(weight.shape[0], rank, *kernel, generator=generator) * scale,  # (out, r[, 1, 1])
            alpha,
        )
    return lora


def mixed_keys(pipeline) -> list[str]:
    """One module of each kind a LoRA meets: attention, feed-forward, 1x1 conv, 3x3 conv, text encoder."""
    keys = [
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
        "unet.up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2",
        "unet.down_blocks.0.attentions.0.proj_in",
        "unet.down_blocks.1.resnets.0.conv1",
        "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
        "text_encoder.encoder.layers.0.self_attn.q_proj",
        # diffusers 0.42 reads kohya text-encoder attention LoRAs by their old-style names only when
        # an out_proj is among them (it keys its name conversion on `to_out_lora`).
        "text_encoder.encoder.layers.0.self_attn.out_proj",
        "text_encoder.encoder.layers.1.mlp.fc1",
    ]
    modules = adaptable_modules(pipeline)
    assert all(key in modules for key in keys)
    assert any(is_spatial_conv(modules[key].weight.shape) for key in keys)
    return keys


def denoiser_output(pipeline, prompt: str = PROMPT) -> torch.Tensor:
    """The UNet's prediction on one fixed input, through the pipeline's own text encoder."""
    latents = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(123))  # (B, C, h, w)
    tokenizer = pipeline.tokenizer
    ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipeline.text_encoder(ids)[0]  # (1, 77, 32)
        return pipeline.unet(latents, torch.tensor([500]), encoder_hidden_states=hidden).sample


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected.float()).norm() / expected.float().norm())
