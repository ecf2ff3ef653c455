"""Flux.1 LoRAs in kohya's (sd-scripts) layout: BFL's module names, with fused projections.

    lora_unet_double_blocks_{i}_img_attn_qkv     <- transformer_blocks.{i}.attn.to_q | to_k | to_v
    lora_unet_single_blocks_{i}_linear1          <- single_transformer_blocks.{i}.attn.to_q | to_k | to_v | proj_mlp
    lora_te1_text_model_...                      <- the CLIP-L text encoder

How fused modules are written and read: formats/kohya_fused.py (q, k, v are as wide as the block's
input; the single blocks' MLP takes the rest), so any Flux-shaped model reads exactly. diffusers'
reader does the same splitting but for Flux.1's widths only (3072 / 12288).
"""

from __future__ import annotations

import torch

from tunelab.formats.kohya_fused import DENOISER, FusedLayout
from tunelab.formats.lora_set import AdapterModule, LoraSet

TEXT_ENCODER_PREFIX = "lora_te1"  # kohya's Flux LoRAs call CLIP-L te1 (T5 would be te3)

# kohya module (under a block) -> the diffusers modules it fuses, in output order.
DOUBLE_BLOCK = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_proj": ("attn.to_out.0",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "txt_mod_lin": ("norm1_context.linear",),
}
SINGLE_BLOCK = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation_lin": ("norm.linear",),
}
FLUX_MLP_RATIO = 4  # Flux.1's MLP hidden width / model width (for a linear1 missing its MLP part)

FLUX = FusedLayout(
    title="Flux",
    base_model_version="flux1",
    blocks={"double_blocks": ("transformer_blocks", DOUBLE_BLOCK), "single_blocks": ("single_transformer_blocks", SINGLE_BLOCK)},
    text_encoder_prefixes={"text_encoder": TEXT_ENCODER_PREFIX},
    read_text_prefixes=("lora_te_", "lora_te1_"),
    rest_width_modules=frozenset({"linear1"}),
    rest_width_ratio=FLUX_MLP_RATIO,
)


def is_kohya_flux(names) -> bool:
    return FLUX.matches(names)


def _kohya_module(module_path: str) -> tuple[str, int] | None:
    """diffusers transformer path -> (kohya module name, index of the part in it)."""
    return FLUX.kohya_module(module_path)


def to_kohya_flux_tensors(lora: LoraSet) -> dict[str, torch.Tensor]:
    return FLUX.to_tensors(lora)


def from_kohya_flux_tensors(modules: dict[str, AdapterModule], resolve_text_encoder) -> LoraSet:
    """The LoraSet of a kohya Flux file's modules (name -> adapter). `resolve_text_encoder(name)` maps a
    CLIP-L kohya name (lora_te_/lora_te1_) to its "text_encoder.<path>" key."""
    return FLUX.from_tensors(modules, resolve_text_encoder)
