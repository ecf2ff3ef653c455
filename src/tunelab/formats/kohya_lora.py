"""kohya-ss LoRA files: `lora_unet_<path>.lora_down.weight`, `.lora_up.weight`, `.alpha`, `ss_*` metadata.

These are what A1111, ComfyUI, Forge and diffusers' `load_lora_weights` read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from tunelab.errors import TunelabError
from tunelab.formats.module_paths import to_file_path
from tunelab.formats.safetensors_io import save_tensors
from tunelab.lora.model import LoraModule, LoraSet, split_component

# Component -> kohya key prefix. Two text encoders (SDXL) are te1/te2; one is plain te.
_DENOISER_PREFIXES = {"unet": "lora_unet", "transformer": "lora_unet"}


def _text_encoder_prefixes(components: set[str]) -> dict[str, str]:
    if "text_encoder_2" in components:
        return {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
    return {"text_encoder": "lora_te"}


def kohya_prefixes(components: Iterable[str]) -> dict[str, str]:
    components = set(components)
    return {**_DENOISER_PREFIXES, **_text_encoder_prefixes(components)}


def kohya_name(key: str, prefixes: dict[str, str]) -> str:
    component, module_path = split_component(key)
    return f"{prefixes[component]}_{to_file_path(component, module_path).replace('.', '_')}"


def to_kohya_tensors(lora: LoraSet) -> dict[str, torch.Tensor]:
    prefixes = kohya_prefixes(split_component(key)[0] for key in lora)
    tensors: dict[str, torch.Tensor] = {}
    for key, module in lora.items():
        name = kohya_name(key, prefixes)
        tensors[f"{name}.lora_down.weight"] = module.down
        tensors[f"{name}.lora_up.weight"] = module.up
        tensors[f"{name}.alpha"] = torch.tensor(float(module.alpha), dtype=module.down.dtype)
    return tensors


def kohya_metadata(lora: LoraSet, base_model_version: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The `ss_*` keys kohya's tools and UIs read to show a LoRA's settings."""
    ranks = {module.rank for module in lora.values()}
    alphas = {module.alpha for module in lora.values()}
    has_conv = any(module.down.dim() == 4 and module.down.shape[-1] > 1 for module in lora.values())
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(ranks)) if ranks else "0",
        "ss_network_alpha": str(next(iter(alphas))) if len(alphas) == 1 else "Dynamic",
        "ss_base_model_version": base_model_version,
        "ss_v2": str(base_model_version.startswith("sd_v2")),
        "ss_network_args": '{"conv_dim": "%d"}' % max(ranks) if has_conv else "{}",
    }
    metadata.update(extra or {})
    return metadata


def write_kohya_lora(lora: LoraSet, path: Path, metadata: dict[str, str]) -> Path:
    return save_tensors(to_kohya_tensors(lora), path, metadata)


def is_kohya_lora(keys: Iterable[str]) -> bool:
    return any(key.startswith(("lora_unet_", "lora_te")) and ".lora_down." in key for key in keys)


def from_kohya_tensors(tensors: dict[str, torch.Tensor], module_keys: Iterable[str]) -> LoraSet:
    """Resolve kohya names back to module paths, using the module paths the model really has.

    kohya names replace every '.' with '_', so the mapping back needs the model's own names.
    """
    module_keys = list(module_keys)
    prefixes = kohya_prefixes(split_component(key)[0] for key in module_keys)
    by_kohya_name = {kohya_name(key, prefixes): key for key in module_keys if split_component(key)[0] in prefixes}
    lora: LoraSet = {}
    unknown = []
    for name in sorted({key.split(".", 1)[0] for key in tensors if key.endswith(".lora_down.weight")}):
        if name not in by_kohya_name:
            unknown.append(name)
            continue
        down = tensors[f"{name}.lora_down.weight"]
        up = tensors[f"{name}.lora_up.weight"]
        alpha_tensor = tensors.get(f"{name}.alpha")
        alpha = float(alpha_tensor.item()) if alpha_tensor is not None else float(down.shape[0])
        lora[by_kohya_name[name]] = LoraModule(down, up, alpha)
    if unknown:
        raise TunelabError(
            f"{len(unknown)} LoRA modules match nothing in this model (first: {unknown[0]}); is it for another architecture?"
        )
    return lora
