"""Key names of the original single-file layout: the one table the reader and the writer share.

A1111, ComfyUI and diffusers' `from_single_file` read Stable Diffusion checkpoints in the
original (LDM; SGM for SDXL) layout:

    model.diffusion_model.*                    UNet: input_blocks / middle_block / output_blocks
    first_stage_model.*                        VAE: encoder.down.N.block.M, mid.attn_1 as 1x1 convs
    cond_stage_model.transformer.text_model.*  SD 1.x: CLIP ViT-L under transformers' names
    cond_stage_model.model.*                   SD 2.x: OpenCLIP ViT-H (transformer.resblocks.N, fused in_proj)
    conditioner.embedders.0.transformer.text_model.*   SDXL: CLIP ViT-L
    conditioner.embedders.1.model.*                    SDXL: OpenCLIP ViT-bigG

models/single_file.py reads these files (detecting the layout from this table, converting with
diffusers' own converters); formats/sd_checkpoint.py writes them (renaming with this table).
UNet and VAE names are derived from each component's config (levels, layers per level, which
levels have attention), so any SD-structured model maps, from the tiny presets to a real SDXL.
It sits in models/ because the reader does, and formats/ may import models/, not the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

from tunelab.errors import TunelabError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
VAE_READ_PREFIXES = (VAE_PREFIX, "vae.")  # some exporters name the VAE `vae.`; read, never written
SDXL_CONDITIONER_PREFIX = "conditioner.embedders."
# transformers' CLIP keeps its weights under this level; the original layout always has it.
TEXT_MODEL_LEVEL = "text_model."


@dataclass(frozen=True)
class TextEncoderPlace:
    """Where one text encoder lives in a single file, and how its weights are named there."""

    root: str  # what every key of this encoder starts with
    naming: Literal["clip", "open_clip"]  # transformers' CLIP names under `text_model.`, or OpenCLIP's own

    @property
    def prefix(self) -> str:
        """The prefix of its weights' names (CLIP's include the `text_model.` level)."""
        return self.root + TEXT_MODEL_LEVEL if self.naming == "clip" else self.root


# Text-encoder layout -> pipeline component -> its place. The layout names the model family.
TEXT_ENCODERS: dict[str, dict[str, TextEncoderPlace]] = {
    "clip": {"text_encoder": TextEncoderPlace("cond_stage_model.transformer.", "clip")},  # SD 1.x
    "open_clip": {"text_encoder": TextEncoderPlace("cond_stage_model.model.", "open_clip")},  # SD 2.x
    "sdxl": {
        "text_encoder": TextEncoderPlace(SDXL_CONDITIONER_PREFIX + "0.transformer.", "clip"),
        "text_encoder_2": TextEncoderPlace(SDXL_CONDITIONER_PREFIX + "1.model.", "open_clip"),
    },
}

# OpenCLIP names for the parts of transformers' CLIP text model; q, k and v are fused into one
# `attn.in_proj_*` per block, and `text_projection` is stored as the (width, projection) matrix.
OPEN_CLIP_PARTS = {
    "embeddings.position_embedding.weight": "positional_embedding",
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
OPEN_CLIP_LAYER_PARTS = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                         "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
OPEN_CLIP_FUSED_PROJECTIONS = ("q_proj", "k_proj", "v_proj")  # stacked in this order into:
OPEN_CLIP_IN_PROJECTION = "attn.in_proj"  # + "_weight" / "_bias"
OPEN_CLIP_TEXT_PROJECTION = "text_projection"


def open_clip_layer(index: int) -> tuple[str, str]:
    """(transformers' prefix, OpenCLIP's prefix) of text-encoder layer `index`."""
    return f"encoder.layers.{index}.", f"transformer.resblocks.{index}."


# diffusers module path -> original module path; a parameter takes the longest matching module.
ModuleMap = dict[str, str]

# Original ResBlock names for the parts of a diffusers ResnetBlock2D.
UNET_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
UNET_FIXED_MODULES = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
UNET_ADDED_EMBEDDING_MODULES = {"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}  # SDXL
UNET_DOWN_BLOCKS = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}  # block type -> has attention
UNET_UP_BLOCKS = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
UNET_CONV_IN_KEY = UNET_PREFIX + UNET_FIXED_MODULES["conv_in"] + ".weight"

VAE_RESNET_PARTS = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# The original VAE attention projects with 1x1 convolutions where diffusers uses linear layers.
VAE_CONV_ATTENTION_WEIGHTS = (".mid.attn_1.q.weight", ".mid.attn_1.k.weight", ".mid.attn_1.v.weight", ".mid.attn_1.proj_out.weight")

# Released SD 1.x, 2.x and SDXL UNets all have two layers per level.
RELEASED_LAYERS_PER_BLOCK = 2


def input_block(level: int, layer: int, layers_per_block: int) -> str:
    """The original `input_blocks.N` of a down level's layer: each level fills `layers_per_block`
    slots, then one downsampler slot; input_blocks.0 is conv_in."""
    return f"input_blocks.{1 + level * (layers_per_block + 1) + layer}"


def first_cross_attention_key(level: int) -> str:
    """The key of the first cross-attention `to_k` of down level `level` in a released UNet; its
    width is the text conditioning's."""
    block = input_block(level, 0, RELEASED_LAYERS_PER_BLOCK)
    return f"{UNET_PREFIX}{block}.1.transformer_blocks.0.attn2.to_k.weight"


def unet_module_map(config, added_embeddings: bool = False) -> ModuleMap:
    """Where each diffusers UNet module lives in the original UNetModel, from the UNet config.

    `added_embeddings` allows SDXL's size/pooled-text embedding (`label_emb`)."""
    layers = _sd_unet_layers_per_block(config, added_embeddings)
    module_map: ModuleMap = dict(UNET_FIXED_MODULES)
    if added_embeddings:
        module_map |= UNET_ADDED_EMBEDDING_MODULES
    last_down = len(config.down_block_types) - 1
    for level, block_type in enumerate(config.down_block_types):
        for layer in range(layers):
            block = input_block(level, layer, layers)
            _add_module(module_map, f"down_blocks.{level}.resnets.{layer}", f"{block}.0", UNET_RESNET_PARTS)
            if UNET_DOWN_BLOCKS[block_type]:
                module_map[f"down_blocks.{level}.attentions.{layer}"] = f"{block}.1"
        if level < last_down:
            module_map[f"down_blocks.{level}.downsamplers.0.conv"] = f"{input_block(level, layers, layers)}.0.op"

    _add_module(module_map, "mid_block.resnets.0", "middle_block.0", UNET_RESNET_PARTS)
    module_map["mid_block.attentions.0"] = "middle_block.1"
    _add_module(module_map, "mid_block.resnets.1", "middle_block.2", UNET_RESNET_PARTS)

    # Up levels have one resnet more (it takes the downsampler's skip); the upsampler shares the
    # level's last slot, after its resnet and attention.
    up_slots = layers + 1
    last_up = len(config.up_block_types) - 1
    for level, block_type in enumerate(config.up_block_types):
        has_attention = UNET_UP_BLOCKS[block_type]
        for layer in range(up_slots):
            slot = level * up_slots + layer
            _add_module(module_map, f"up_blocks.{level}.resnets.{layer}", f"output_blocks.{slot}.0", UNET_RESNET_PARTS)
            if has_attention:
                module_map[f"up_blocks.{level}.attentions.{layer}"] = f"output_blocks.{slot}.1"
        if level < last_up:
            position = 2 if has_attention else 1
            module_map[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{level * up_slots + layers}.{position}.conv"
    return module_map


def vae_module_map(config) -> ModuleMap:
    """Where each diffusers AutoencoderKL module lives in the original autoencoder, from the VAE config."""
    layers = _sd_vae_layers_per_block(config)
    levels = len(config.block_out_channels)
    module_map: ModuleMap = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    for side in ("encoder", "decoder"):
        module_map[f"{side}.conv_in"] = f"{side}.conv_in"
        module_map[f"{side}.conv_norm_out"] = f"{side}.norm_out"
        module_map[f"{side}.conv_out"] = f"{side}.conv_out"
        _add_module(module_map, f"{side}.mid_block.resnets.0", f"{side}.mid.block_1", VAE_RESNET_PARTS)
        _add_module(module_map, f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1", VAE_ATTENTION_PARTS)
        _add_module(module_map, f"{side}.mid_block.resnets.1", f"{side}.mid.block_2", VAE_RESNET_PARTS)
    for level in range(levels):
        for layer in range(layers):
            _add_module(module_map, f"encoder.down_blocks.{level}.resnets.{layer}", f"encoder.down.{level}.block.{layer}", VAE_RESNET_PARTS)
        if level < levels - 1:
            module_map[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = f"encoder.down.{level}.downsample.conv"
    for block in range(levels):
        level = levels - 1 - block  # the original decoder numbers levels by resolution, diffusers in call order
        for layer in range(layers + 1):
            _add_module(module_map, f"decoder.up_blocks.{block}.resnets.{layer}", f"decoder.up.{level}.block.{layer}", VAE_RESNET_PARTS)
        if block < levels - 1:
            module_map[f"decoder.up_blocks.{block}.upsamplers.0.conv"] = f"decoder.up.{level}.upsample.conv"
    return module_map


def original_name(name: str, module_map: ModuleMap) -> str | None:
    """A diffusers parameter's name in the original layout (None where the map has no place for it)."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        original_module = module_map.get(".".join(parts[:cut]))
        if original_module is not None:
            return ".".join([original_module, *parts[cut:]])
    return None


def original_module_path(module_path: str, module_map: ModuleMap) -> str | None:
    """A diffusers module's path in the original layout (None where the map has no place for it)."""
    name = original_name(module_path + ".weight", module_map)
    return None if name is None else name.removesuffix(".weight")


def _sd_unet_layers_per_block(config, added_embeddings: bool = False) -> int:
    def refuse(reason: str) -> TunelabError:
        return TunelabError(f"cannot write this UNet in the original Stable Diffusion layout: {reason}")

    unknown = [t for t in config.down_block_types if t not in UNET_DOWN_BLOCKS] + [t for t in config.up_block_types if t not in UNET_UP_BLOCKS]
    if unknown:
        raise refuse(f"unsupported block types {sorted(set(unknown))}")
    if len(config.down_block_types) != len(config.up_block_types):
        raise refuse("it has a different number of down and up blocks")
    if config.mid_block_type != "UNetMidBlock2DCrossAttn":
        raise refuse(f"unsupported middle block {config.mid_block_type}")
    if config.class_embed_type is not None or config.addition_embed_type not in (None, "text_time" if added_embeddings else None):
        raise refuse("it has class or added-condition embeddings (SDXL-style)")
    return _single_layer_count(config.layers_per_block, refuse)


def _sd_vae_layers_per_block(config) -> int:
    def refuse(reason: str) -> TunelabError:
        return TunelabError(f"cannot write this VAE in the original Stable Diffusion layout: {reason}")

    block_types = set(config.down_block_types) | set(config.up_block_types)
    if not block_types <= {"DownEncoderBlock2D", "UpDecoderBlock2D"}:
        raise refuse(f"unsupported block types {sorted(block_types)}")
    if not getattr(config, "mid_block_add_attention", True):
        raise refuse("its middle block has no attention")
    return _single_layer_count(config.layers_per_block, refuse)


def _single_layer_count(layers_per_block, refuse) -> int:
    # The original layout numbers blocks assuming one count for every level.
    counts = set(layers_per_block) if isinstance(layers_per_block, (list, tuple)) else {layers_per_block}
    if len(counts) != 1:
        raise refuse(f"levels have different numbers of layers {list(layers_per_block)}")
    return int(counts.pop())


def _add_module(module_map: ModuleMap, diffusers_path: str, original_path: str, parts: Mapping[str, str]) -> None:
    module_map[diffusers_path] = original_path
    for diffusers_part, original_part in parts.items():
        module_map[f"{diffusers_path}.{diffusers_part}"] = f"{original_path}.{original_part}"


# SD3 / SD3.5 single files (Stability's own, and what diffusers' `from_single_file` reads): the MMDiT under
# `model.diffusion_model.` in its original names, the VAE as SD's, and the three text encoders under
# `text_encoders.` in transformers' names.
SD3_TEXT_ENCODERS = {
    "text_encoder": "text_encoders.clip_l.transformer.",
    "text_encoder_2": "text_encoders.clip_g.transformer.",
    "text_encoder_3": "text_encoders.t5xxl.transformer.",
}
SD3_JOINT_BLOCKS_KEY = UNET_PREFIX + "joint_blocks."
SD3_FIXED_MODULES = {
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
SD3_POSITIONS = ("pos_embed.pos_embed", "pos_embed")  # (diffusers name, original name): a buffer-like parameter
# diffusers module under transformer_blocks.{i} -> original module under joint_blocks.{i}
SD3_BLOCK_MODULES = {
    "attn.to_out.0": "x_block.attn.proj",
    "attn.norm_q": "x_block.attn.ln_q",
    "attn.norm_k": "x_block.attn.ln_k",
    "attn.to_add_out": "context_block.attn.proj",
    "attn.norm_added_q": "context_block.attn.ln_q",
    "attn.norm_added_k": "context_block.attn.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj",
    "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
    "norm1.linear": "x_block.adaLN_modulation.1",
    "norm1_context.linear": "context_block.adaLN_modulation.1",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}
# original fused module under joint_blocks.{i} <- the diffusers modules stacked into it, in order
SD3_FUSED_MODULES = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}
# Final-norm modulations the original stores as (shift, scale) and diffusers as (scale, shift): the model's
# last one, and the last block's context stream (which has only that norm).
SD3_SWAPPED_MODULES = ("norm_out.linear",)
SD3_LAST_BLOCK_SWAPPED = ("norm1_context.linear",)
