"""Renaming a diffusers component's weights into an original single-file layout: the helpers every
single-file writer (SD/SDXL: sd_checkpoint.py, SD3: sd3_checkpoint.py) shares."""

from __future__ import annotations

from typing import Mapping

import torch

from tunelab.errors import TunelabError
from tunelab.models.original_layout import VAE_CONV_ATTENTION_WEIGHTS, ModuleMap, original_name, vae_module_map


def vae_to_original(vae) -> dict[str, torch.Tensor]:
    renamed = rename(vae.state_dict(), vae_module_map(vae.config), "VAE")
    for name, tensor in renamed.items():
        if name.endswith(VAE_CONV_ATTENTION_WEIGHTS) and tensor.ndim == 2:
            renamed[name] = tensor[:, :, None, None]  # [C, C] -> [C, C, 1, 1]
    return renamed


def rename(state: Mapping[str, torch.Tensor], module_map: ModuleMap, component: str) -> dict[str, torch.Tensor]:
    refuse_adapter_layers(state, component)
    renamed: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        new_name = original_name(name, module_map)
        if new_name is None or new_name in renamed:
            problem = "has no original name" if new_name is None else f"collides on {new_name!r}"
            raise TunelabError(f"cannot write the {component} in the original Stable Diffusion layout: {name!r} {problem}")
        renamed[new_name] = tensor
    return renamed


def refuse_adapter_layers(state: Mapping[str, torch.Tensor], component: str) -> None:
    # PEFT-wrapped layers rename weights to `...base_layer.weight` and add `lora_A/B`; the
    # original layout has no place for them.
    wrapped = next((name for name in state if ".base_layer." in name or ".lora_" in name), None)
    if wrapped is not None:
        raise TunelabError(f"the {component} still has adapter layers ({wrapped}); fuse and unload them before writing a single file")


def with_prefix(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + name: tensor for name, tensor in state.items()}
