"""Write a diffusers Stable Diffusion pipeline as one checkpoint in the original (LDM) layout.

SD 1.x files take the LDM layout, SDXL files the SGM one (two text encoders, the second in
OpenCLIP's names with q, k, v fused), SD3 files Stability's MMDiT layout (sd3_checkpoint.py). Every key name comes from models/original_layout.py, the
table the single-file reader uses too; this module only renames and reshapes the tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from transformers import CLIPTextModel

from tunelab.errors import TunelabError
from tunelab.formats.original_weights import refuse_adapter_layers, rename, vae_to_original, with_prefix
from tunelab.formats.safetensors_io import save_tensors
from tunelab.formats.sd3_checkpoint import sd3_to_original_state_dict
from tunelab.models.original_layout import (
    OPEN_CLIP_FUSED_PROJECTIONS,
    OPEN_CLIP_IN_PROJECTION,
    OPEN_CLIP_LAYER_PARTS,
    OPEN_CLIP_PARTS,
    OPEN_CLIP_TEXT_PROJECTION,
    TEXT_ENCODERS,
    TEXT_MODEL_LEVEL,
    UNET_PREFIX,
    VAE_PREFIX,
    open_clip_layer,
    unet_module_map,
    vae_module_map,
)
from tunelab.precision import PRECISIONS

# Pipeline class -> the text-encoder layout (a key of TEXT_ENCODERS) it is written in.
WRITABLE_PIPELINES = {"StableDiffusionPipeline": "clip", "StableDiffusionXLPipeline": "sdxl"}


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


def _is_sdxl(pipeline) -> bool:
    return WRITABLE_PIPELINES.get(type(pipeline).__name__) == "sdxl"


# Pipeline classes written in another layout -> the function that renames their weights.
OTHER_LAYOUTS = {"StableDiffusion3Pipeline": sd3_to_original_state_dict}


def require_writable(pipeline) -> None:
    """Refuse, before any work, a pipeline this writer has no layout for (e.g. Flux)."""
    name = type(pipeline).__name__
    if name not in WRITABLE_PIPELINES and name not in OTHER_LAYOUTS:
        raise TunelabError(
            f"--single-file writes Stable Diffusion 1.x, SDXL and SD3 checkpoints; a {name} is saved as a diffusers folder only"
        )
    if name in WRITABLE_PIPELINES:
        unet_module_map(pipeline.unet.config, added_embeddings=_is_sdxl(pipeline))
    vae_module_map(pipeline.vae.config)


def pipeline_to_original_state_dict(pipeline) -> dict[str, torch.Tensor]:
    """The pipeline's denoiser, VAE and text encoder(s) under their original (SGM for SDXL, Stability's for SD3) names."""
    require_writable(pipeline)
    if type(pipeline).__name__ in OTHER_LAYOUTS:
        return OTHER_LAYOUTS[type(pipeline).__name__](pipeline)
    state: dict[str, torch.Tensor] = {}
    state.update(with_prefix(UNET_PREFIX, unet_to_original(pipeline.unet, added_embeddings=_is_sdxl(pipeline))))
    state.update(with_prefix(VAE_PREFIX, vae_to_original(pipeline.vae)))
    for component, place in TEXT_ENCODERS[WRITABLE_PIPELINES[type(pipeline).__name__]].items():
        write = sd1_text_encoder_to_original if place.naming == "clip" else open_clip_to_original
        state.update(with_prefix(place.prefix, write(getattr(pipeline, component))))
    return state


def unet_to_original(unet, added_embeddings: bool = False) -> dict[str, torch.Tensor]:
    return rename(unet.state_dict(), unet_module_map(unet.config, added_embeddings), "UNet")


def open_clip_to_original(text_encoder) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection as OpenCLIP stores it: `transformer.resblocks.N` with q, k, v fused into
    `attn.in_proj_weight`, and `text_projection` as the (width, projection) matrix it multiplies by."""
    state = {name.removeprefix(TEXT_MODEL_LEVEL): tensor for name, tensor in text_encoder.state_dict().items()
             if not name.endswith("position_ids")}
    refuse_adapter_layers(state, "second text encoder")
    original = {OPEN_CLIP_PARTS[name]: state.pop(name) for name in list(state) if name in OPEN_CLIP_PARTS}
    original[OPEN_CLIP_TEXT_PROJECTION] = state.pop("text_projection.weight").T.contiguous()  # (width, projection)
    for index in range(text_encoder.config.num_hidden_layers):
        layer, block = open_clip_layer(index)
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{layer}self_attn.{name}.{kind}") for name in OPEN_CLIP_FUSED_PROJECTIONS]
            original[f"{block}{OPEN_CLIP_IN_PROJECTION}_{kind}"] = torch.cat(parts)  # (3 * width, width) / (3 * width,)
            for part, original_part in OPEN_CLIP_LAYER_PARTS.items():
                original[f"{block}{original_part}.{kind}"] = state.pop(f"{layer}{part}.{kind}")
    if state:
        raise TunelabError(f"cannot write the second text encoder in OpenCLIP's layout: {sorted(state)[0]} has no place there")
    return original


def sd1_text_encoder_to_original(text_encoder) -> dict[str, torch.Tensor]:
    """CLIP text-model weights named as inside `cond_stage_model.transformer.text_model.`."""
    # SD 1.x uses OpenAI's CLIP ViT-L (quick_gelu); SD 2.x's OpenCLIP encoder (gelu) has another layout.
    if type(text_encoder) is not CLIPTextModel or text_encoder.config.hidden_act != "quick_gelu":
        raise TunelabError(
            "only SD 1.x-style pipelines (OpenAI CLIP text encoder) can be written as a single file; "
            f"the SD 2.x OpenCLIP layout ({TEXT_ENCODERS['open_clip']['text_encoder'].root}*) is not supported yet"
        )
    state = text_encoder.state_dict()
    refuse_adapter_layers(state, "text encoder")
    # transformers >= 5.6 stores CLIPTextModel without its `text_model.` level, older versions
    # with it; the original layout always has it and diffusers' loader looks for it.
    return {name.removeprefix(TEXT_MODEL_LEVEL): tensor for name, tensor in state.items()}


def _in_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    tensor = tensor.detach().to("cpu")
    return tensor.to(dtype) if tensor.is_floating_point() else tensor  # integer buffers keep their type


def _checked_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    metadata = dict(metadata or {})
    wrong = [key for key, value in metadata.items() if not isinstance(key, str) or not isinstance(value, str)]
    if wrong:
        raise TunelabError(f"safetensors metadata must map strings to strings; fix the entries {wrong}")
    return metadata
