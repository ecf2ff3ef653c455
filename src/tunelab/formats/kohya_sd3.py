"""SD3 / SD3.5 LoRAs in kohya's (sd-scripts, networks/lora_sd3.py) layout: the original MMDiT's module names.

    lora_unet_joint_blocks_{i}_x_block_attn_qkv        <- transformer_blocks.{i}.attn.to_q | to_k | to_v
    lora_unet_joint_blocks_{i}_context_block_attn_qkv  <- transformer_blocks.{i}.attn.add_q_proj | add_k_proj | add_v_proj
    lora_unet_joint_blocks_{i}_x_block_attn2_qkv       <- transformer_blocks.{i}.attn2.to_q | to_k | to_v (SD3.5 Medium)
    lora_unet_context_embedder, lora_unet_final_layer_linear, ...  <- the modules outside the blocks
    lora_te1_text_model_... / lora_te2_text_model_...  <- CLIP-L / CLIP-G (kohya's te3, T5, is not read)

The names are the single-file layout's (models/original_layout.py) with '.' as '_'. q, k and v are fused as
formats/kohya_fused.py describes (each as wide as the block). The final modulations, which the original stores
as (shift, scale) and diffusers as (scale, shift), have their rows swapped on the way in and out. diffusers
0.42's SD3 loader reads only its own (PEFT) layout, not this one; `tunelab generate` and `tunelab lora` read both.
"""

from __future__ import annotations

from tunelab.formats.kohya_fused import FusedLayout
from tunelab.models.original_layout import (
    SD3_BLOCK_MODULES,
    SD3_FIXED_MODULES,
    SD3_FUSED_MODULES,
    SD3_LAST_BLOCK_SWAPPED,
    SD3_SWAPPED_MODULES,
)


def _kohya(original: str) -> str:
    return original.replace(".", "_")


# kohya module under joint_blocks_{i}_ -> the diffusers modules under transformer_blocks.{i} it holds, in order
JOINT_BLOCK = {_kohya(original): (diffusers,) for diffusers, original in SD3_BLOCK_MODULES.items()}
JOINT_BLOCK |= {_kohya(original): parts for original, parts in SD3_FUSED_MODULES.items()}

SD3 = FusedLayout(
    title="SD3",
    base_model_version="sd3",
    blocks={"joint_blocks": ("transformer_blocks", JOINT_BLOCK)},
    text_encoder_prefixes={"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"},
    read_text_prefixes=("lora_te1_", "lora_te2_"),
    swapped_halves=frozenset(_kohya(SD3_BLOCK_MODULES[name]) for name in SD3_LAST_BLOCK_SWAPPED)
    | frozenset(_kohya(SD3_FIXED_MODULES[name]) for name in SD3_SWAPPED_MODULES),
    top_modules={_kohya(original): diffusers for diffusers, original in SD3_FIXED_MODULES.items()},
    diffusers_reads=False,  # its SD3 loader keeps only keys under transformer. / text_encoder(_2). (tests/lora/test_lora_check.py)
)
