"""Write an SD3 / SD3.5 pipeline as one checkpoint in Stability's single-file layout (what diffusers'
`StableDiffusion3Pipeline.from_single_file`, ComfyUI and kohya read).

Every name comes from models/original_layout.py; this module renames, stacks q, k, v into the original's
fused `qkv`, and puts the (shift, scale) halves of the final modulations back in the original's order.
"""

from __future__ import annotations

import torch

from tunelab.errors import TunelabError
from tunelab.formats.original_weights import refuse_adapter_layers, vae_to_original, with_prefix
from tunelab.models.original_layout import (
    SD3_BLOCK_MODULES,
    SD3_FIXED_MODULES,
    SD3_FUSED_MODULES,
    SD3_LAST_BLOCK_SWAPPED,
    SD3_POSITIONS,
    SD3_SWAPPED_MODULES,
    SD3_TEXT_ENCODERS,
    UNET_PREFIX,
    VAE_PREFIX,
)


def sd3_to_original_state_dict(pipeline) -> dict[str, torch.Tensor]:
    """The pipeline's transformer, VAE and text encoders (those it has: SD3 runs without T5) under their single-file names."""
    state = with_prefix(UNET_PREFIX, transformer_to_original(pipeline.transformer))
    state.update(with_prefix(VAE_PREFIX, vae_to_original(pipeline.vae)))
    for component, prefix in SD3_TEXT_ENCODERS.items():
        encoder = getattr(pipeline, component, None)
        if encoder is not None:
            weights = encoder.state_dict()
            refuse_adapter_layers(weights, component.replace("_", " "))
            # The original keeps CLIP's `text_model.` level; transformers >= 5.6 drops it for CLIPTextModel only.
            state.update(with_prefix(prefix, {name: tensor.clone() for name, tensor in weights.items()}))  # T5's tied embeddings: own copies
    return state


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    return torch.cat(tensor.chunk(2, dim=0)[::-1])  # (scale, shift) <-> (shift, scale)


def transformer_to_original(transformer) -> dict[str, torch.Tensor]:
    state = dict(transformer.state_dict())
    refuse_adapter_layers(state, "transformer")
    last = transformer.config.num_layers - 1
    original = {SD3_POSITIONS[1]: state.pop(SD3_POSITIONS[0])}
    for diffusers, name in SD3_FIXED_MODULES.items():
        for kind in ("weight", "bias"):
            tensor = state.pop(f"{diffusers}.{kind}")
            original[f"{name}.{kind}"] = _swap_halves(tensor) if diffusers in SD3_SWAPPED_MODULES else tensor
    for index in range(transformer.config.num_layers):
        block, joint = f"transformer_blocks.{index}.", f"joint_blocks.{index}."
        for name, parts in SD3_FUSED_MODULES.items():
            for kind in ("weight", "bias"):
                stacked = [state.pop(f"{block}{part}.{kind}", None) for part in parts]
                if all(tensor is not None for tensor in stacked):
                    original[f"{joint}{name}.{kind}"] = torch.cat(stacked)  # (3 width, width) / (3 width,)
        for diffusers, name in SD3_BLOCK_MODULES.items():
            for kind in ("weight", "bias"):
                tensor = state.pop(f"{block}{diffusers}.{kind}", None)
                if tensor is not None:
                    swapped = index == last and diffusers in SD3_LAST_BLOCK_SWAPPED
                    original[f"{joint}{name}.{kind}"] = _swap_halves(tensor) if swapped else tensor
    if state:
        raise TunelabError(f"cannot write this transformer in SD3's single-file layout: {sorted(state)[0]} has no place there")
    return original
