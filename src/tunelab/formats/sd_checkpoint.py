"""Write a diffusers Stable Diffusion pipeline as one checkpoint in the original (LDM) layout.

A1111, ComfyUI and diffusers' `from_single_file` all read this layout:

    model.diffusion_model.*                    UNet: input_blocks / middle_block / output_blocks
    first_stage_model.*                        VAE: encoder.down.N.block.M, mid.attn_1 as 1x1 convs
    cond_stage_model.transformer.text_model.*  CLIP ViT-L text encoder (SD 1.x)

SDXL files (SGM layout) have the same UNet and VAE prefixes and two text encoders:

    conditioner.embedders.0.transformer.text_model.*   CLIP ViT-L
    conditioner.embedders.1.model.*                    OpenCLIP ViT-bigG (transformer.resblocks.N, fused in_proj)

Names are derived from each component's config (levels, layers per level,
which levels have attention), so any SD-structured model maps, from the tiny
preset to a real SD 1.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from tunelab.errors import TunelabError
from tunelab.formats.safetensors_io import save_tensors
from tunelab.precision import PRECISIONS

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_ENCODER_PREFIX = "cond_stage_model.transformer.text_model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

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
VAE_RESNET_PARTS = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# The original VAE attention projects with 1x1 convolutions where diffusers uses linear layers.
VAE_CONV_ATTENTION_WEIGHTS = (".mid.attn_1.q.weight", ".mid.attn_1.k.weight", ".mid.attn_1.v.weight", ".mid.attn_1.proj_out.weight")

UNET_DOWN_BLOCKS = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}  # block type -> has attention
UNET_UP_BLOCKS = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}


def save_single_file(
    pipeline,
    path: str | Path,
    dtype: torch.dtype = torch.float16,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write UNet + VAE + text encoder as one original-layout .safetensors file; returns its path."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise TunelabError(f"single-file checkpoints are written as .safetensors, not {path.suffix or 'a file without extension'} ({path.name})")
    if dtype not in PRECISIONS.values():
        choices = ", ".join(f"{known} ({name})" for name, known in PRECISIONS.items())
        raise TunelabError(f"cannot save in {dtype}; choose {choices}")
    header = {"format": "pt", **_checked_metadata(metadata)}
    tensors = {name: _in_dtype(tensor, dtype) for name, tensor in pipeline_to_original_state_dict(pipeline).items()}
    return save_tensors(tensors, path, metadata=header)  # atomic write, refuses NaN/inf weights


WRITABLE_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def _is_sdxl(pipeline) -> bool:
    return type(pipeline).__name__ == "StableDiffusionXLPipeline"


def require_writable(pipeline) -> None:
    """Refuse, before any work, a pipeline this writer has no layout for (e.g. Flux)."""
    if type(pipeline).__name__ not in WRITABLE_PIPELINES:
        raise TunelabError(
            f"--single-file writes Stable Diffusion 1.x and SDXL checkpoints; a {type(pipeline).__name__} is saved as a diffusers folder only"
        )
    unet_module_map(pipeline.unet.config, added_embeddings=_is_sdxl(pipeline))
    vae_module_map(pipeline.vae.config)


def pipeline_to_original_state_dict(pipeline) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder(s) under their original Stable Diffusion (SGM for SDXL) names."""
    require_writable(pipeline)
    state: dict[str, torch.Tensor] = {}
    state.update(_with_prefix(UNET_PREFIX, unet_to_original(pipeline.unet, added_embeddings=_is_sdxl(pipeline))))
    state.update(_with_prefix(VAE_PREFIX, vae_to_original(pipeline.vae)))
    if _is_sdxl(pipeline):
        state.update(_with_prefix(SDXL_CLIP_L_PREFIX, sd1_text_encoder_to_original(pipeline.text_encoder)))
        state.update(_with_prefix(SDXL_OPEN_CLIP_PREFIX, open_clip_to_original(pipeline.text_encoder_2)))
    else:
        state.update(_with_prefix(SD1_TEXT_ENCODER_PREFIX, sd1_text_encoder_to_original(pipeline.text_encoder)))
    return state


def unet_to_original(unet, added_embeddings: bool = False) -> dict[str, torch.Tensor]:
    return _rename(unet.state_dict(), unet_module_map(unet.config, added_embeddings), "UNet")


# OpenCLIP (SDXL's second encoder) names for the parts of transformers' CLIP text model.
OPEN_CLIP_PARTS = {
    "embeddings.position_embedding.weight": "positional_embedding",
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
OPEN_CLIP_LAYER_PARTS = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                         "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def open_clip_to_original(text_encoder) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection as OpenCLIP stores it: `transformer.resblocks.N` with q, k, v fused into
    `attn.in_proj_weight`, and `text_projection` as the (width, projection) matrix it multiplies by."""
    state = {name.removeprefix("text_model."): tensor for name, tensor in text_encoder.state_dict().items()
             if not name.endswith("position_ids")}
    _refuse_adapter_layers(state, "second text encoder")
    original = {OPEN_CLIP_PARTS[name]: state.pop(name) for name in list(state) if name in OPEN_CLIP_PARTS}
    original["text_projection"] = state.pop("text_projection.weight").T.contiguous()  # (width, projection)
    for index in range(text_encoder.config.num_hidden_layers):
        layer, block = f"encoder.layers.{index}.", f"transformer.resblocks.{index}."
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{layer}self_attn.{name}.{kind}") for name in ("q_proj", "k_proj", "v_proj")]
            original[f"{block}attn.in_proj_{kind}"] = torch.cat(parts)  # (3 * width, width) / (3 * width,)
            for part, original_part in OPEN_CLIP_LAYER_PARTS.items():
                original[f"{block}{original_part}.{kind}"] = state.pop(f"{layer}{part}.{kind}")
    if state:
        raise TunelabError(f"cannot write the second text encoder in OpenCLIP's layout: {sorted(state)[0]} has no place there")
    return original


def vae_to_original(vae) -> dict[str, torch.Tensor]:
    renamed = _rename(vae.state_dict(), vae_module_map(vae.config), "VAE")
    for name, tensor in renamed.items():
        if name.endswith(VAE_CONV_ATTENTION_WEIGHTS) and tensor.ndim == 2:
            renamed[name] = tensor[:, :, None, None]  # [C, C] -> [C, C, 1, 1]
    return renamed


def sd1_text_encoder_to_original(text_encoder) -> dict[str, torch.Tensor]:
    """CLIP text-model weights named as inside `cond_stage_model.transformer.text_model.`."""
    from transformers import CLIPTextModel

    # SD 1.x uses OpenAI's CLIP ViT-L (quick_gelu); SD 2.x's OpenCLIP encoder (gelu) has another layout.
    if type(text_encoder) is not CLIPTextModel or text_encoder.config.hidden_act != "quick_gelu":
        raise TunelabError(
            "only SD 1.x-style pipelines (OpenAI CLIP text encoder) can be written as a single file; "
            "the SD 2.x OpenCLIP layout (cond_stage_model.model.*) is not supported yet"
        )
    state = text_encoder.state_dict()
    _refuse_adapter_layers(state, "text encoder")
    # transformers >= 5.6 stores CLIPTextModel without its `text_model.` level, older versions
    # with it; the original layout always has it and diffusers' loader looks for it.
    return {name.removeprefix("text_model."): tensor for name, tensor in state.items()}


def unet_module_map(config, added_embeddings: bool = False) -> ModuleMap:
    """Where each diffusers UNet module lives in the original UNetModel, from the UNet config.

    `added_embeddings` allows SDXL's size/pooled-text embedding (`label_emb`); only LoRA names use
    that, since single files are written for SD 1.x only."""
    layers = _sd_unet_layers_per_block(config, added_embeddings)
    module_map: ModuleMap = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    if added_embeddings:
        module_map |= {"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    # Each down level fills `layers` input slots (resnet [+ attention]) and then one downsampler
    # slot, except the last level, which does not downsample. input_blocks.0 is conv_in.
    down_slots = layers + 1
    last_down = len(config.down_block_types) - 1
    for block, block_type in enumerate(config.down_block_types):
        for layer in range(layers):
            slot = 1 + block * down_slots + layer
            _add_module(module_map, f"down_blocks.{block}.resnets.{layer}", f"input_blocks.{slot}.0", UNET_RESNET_PARTS)
            if UNET_DOWN_BLOCKS[block_type]:
                module_map[f"down_blocks.{block}.attentions.{layer}"] = f"input_blocks.{slot}.1"
        if block < last_down:
            module_map[f"down_blocks.{block}.downsamplers.0.conv"] = f"input_blocks.{1 + block * down_slots + layers}.0.op"

    _add_module(module_map, "mid_block.resnets.0", "middle_block.0", UNET_RESNET_PARTS)
    module_map["mid_block.attentions.0"] = "middle_block.1"
    _add_module(module_map, "mid_block.resnets.1", "middle_block.2", UNET_RESNET_PARTS)

    # Up levels have one resnet more (it takes the downsampler's skip); the upsampler shares the
    # level's last slot, after its resnet and attention.
    up_slots = layers + 1
    last_up = len(config.up_block_types) - 1
    for block, block_type in enumerate(config.up_block_types):
        has_attention = UNET_UP_BLOCKS[block_type]
        for layer in range(up_slots):
            slot = block * up_slots + layer
            _add_module(module_map, f"up_blocks.{block}.resnets.{layer}", f"output_blocks.{slot}.0", UNET_RESNET_PARTS)
            if has_attention:
                module_map[f"up_blocks.{block}.attentions.{layer}"] = f"output_blocks.{slot}.1"
        if block < last_up:
            position = 2 if has_attention else 1
            module_map[f"up_blocks.{block}.upsamplers.0.conv"] = f"output_blocks.{block * up_slots + layers}.{position}.conv"
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


def _rename(state: Mapping[str, torch.Tensor], module_map: ModuleMap, component: str) -> dict[str, torch.Tensor]:
    _refuse_adapter_layers(state, component)
    renamed: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        original = _original_name(name, module_map)
        if original is None or original in renamed:
            problem = "has no original name" if original is None else f"collides on {original!r}"
            raise TunelabError(f"cannot write the {component} in the original Stable Diffusion layout: {name!r} {problem}")
        renamed[original] = tensor
    return renamed


def original_module_path(module_path: str, module_map: ModuleMap) -> str | None:
    """A diffusers module's path in the original layout (None where the map has no place for it)."""
    name = _original_name(module_path + ".weight", module_map)
    return None if name is None else name.removesuffix(".weight")


def _original_name(name: str, module_map: ModuleMap) -> str | None:
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        original_module = module_map.get(".".join(parts[:cut]))
        if original_module is not None:
            return ".".join([original_module, *parts[cut:]])
    return None


def _refuse_adapter_layers(state: Mapping[str, torch.Tensor], component: str) -> None:
    # PEFT-wrapped layers rename weights to `...base_layer.weight` and add `lora_A/B`; the
    # original layout has no place for them.
    wrapped = next((name for name in state if ".base_layer." in name or ".lora_" in name), None)
    if wrapped is not None:
        raise TunelabError(f"the {component} still has adapter layers ({wrapped}); fuse and unload them before writing a single file")


def _with_prefix(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + name: tensor for name, tensor in state.items()}


def _in_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    tensor = tensor.detach().to("cpu")
    return tensor.to(dtype) if tensor.is_floating_point() else tensor  # integer buffers keep their type


def _checked_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    metadata = dict(metadata or {})
    wrong = [key for key, value in metadata.items() if not isinstance(key, str) or not isinstance(value, str)]
    if wrong:
        raise TunelabError(f"safetensors metadata must map strings to strings; fix the entries {wrong}")
    return metadata
