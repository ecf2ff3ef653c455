"""SD3 / SD3.5 LoRAs in kohya's (sd-scripts, networks/lora_sd3.py) layout: the original MMDiT's module names.

    lora_unet_joint_blocks_{i}_x_block_attn_qkv        <- transformer_blocks.{i}.attn.to_q | to_k | to_v
    lora_unet_joint_blocks_{i}_context_block_attn_qkv  <- transformer_blocks.{i}.attn.add_q_proj | add_k_proj | add_v_proj
    lora_unet_joint_blocks_{i}_x_block_attn2_qkv       <- transformer_blocks.{i}.attn2.to_q | to_k | to_v (SD3.5 Medium)
    lora_te1_text_model_... / lora_te2_text_model_...  <- CLIP-L / CLIP-G (kohya's te3, T5, is not read)

q, k and v are fused as formats/kohya_fused.py describes (each as wide as the block). The last block's
context stream has only its modulation, which the original stores as (shift, scale) and diffusers as
(scale, shift): those rows are swapped on the way in and out. diffusers 0.42's SD3 loader reads only its
own (PEFT) layout, not this one; `tunelab generate` and `tunelab lora` read both.
"""

from __future__ import annotations

from tunelab.formats.kohya_fused import FusedLayout


def _stream(kohya: str, attention: tuple[str, ...], out: str, mlp: str, norm: str) -> dict[str, tuple[str, ...]]:
    """One stream of a joint block (x_block: the image, context_block: the text)."""
    return {
        f"{kohya}_attn_qkv": tuple(f"attn.{name}" for name in attention),
        f"{kohya}_attn_proj": (f"attn.{out}",),
        f"{kohya}_mlp_fc1": (f"{mlp}.net.0.proj",),
        f"{kohya}_mlp_fc2": (f"{mlp}.net.2",),
        f"{kohya}_adaLN_modulation_1": (f"{norm}.linear",),
    }


JOINT_BLOCK = {
    **_stream("x_block", ("to_q", "to_k", "to_v"), "to_out.0", "ff", "norm1"),
    "x_block_attn2_qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),  # SD3.5 Medium's dual attention
    "x_block_attn2_proj": ("attn2.to_out.0",),
    **_stream("context_block", ("add_q_proj", "add_k_proj", "add_v_proj"), "to_add_out", "ff_context", "norm1_context"),
}

SD3 = FusedLayout(
    title="SD3",
    base_model_version="sd3",
    blocks={"joint_blocks": ("transformer_blocks", JOINT_BLOCK)},
    text_encoder_prefixes={"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"},
    read_text_prefixes=("lora_te1_", "lora_te2_"),
    swapped_halves=frozenset({"context_block_adaLN_modulation_1"}),
)
