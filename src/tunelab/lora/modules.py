"""The modules of a model a LoRA can adapt, keyed as LoRA sets are: "<component>.<module path>"."""

from __future__ import annotations

import torch

from tunelab.formats.module_paths import from_file_path
from tunelab.models.family import family_for

ADAPTABLE_TYPES = (torch.nn.Linear, torch.nn.Conv2d)


def adaptable_modules(pipeline) -> dict[str, torch.nn.Module]:
    """Every Linear and Conv2d of the denoiser and the text encoder(s): what a LoRA (or LoCon) may change."""
    family = family_for(pipeline)
    modules: dict[str, torch.nn.Module] = {}
    for component in (family.denoiser_name, *family.text_encoder_names):
        root = getattr(pipeline, component, None)
        if root is None:
            continue
        for path, module in root.named_modules():
            if isinstance(module, ADAPTABLE_TYPES):
                # LoRA keys never carry CLIP's `text_model.` level, whatever the transformers version.
                modules[f"{component}.{from_file_path(component, path)}"] = module
    return modules


def module_weights(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {key: module.weight.detach() for key, module in modules.items()}


def is_spatial_conv(weight_shape) -> bool:
    """A convolution with a kernel larger than 1x1 (LoRA tools treat 1x1 convolutions as linear layers)."""
    return len(weight_shape) == 4 and tuple(weight_shape[2:]) != (1, 1)
