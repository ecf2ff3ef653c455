"""PEFT/diffusers LoRA files: `unet.<path>.lora_A.weight` / `lora_B.weight`, alphas in adapter metadata.

This is what diffusers' `save_lora_weights` writes and its `load_lora_weights` reads:
the LoRA config of each component is stored as JSON under `lora_adapter_metadata`,
its keys prefixed with the component name.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from tunelab.errors import TunelabError
from tunelab.formats.module_paths import from_file_path, to_file_path
from tunelab.formats.safetensors_io import save_tensors
from tunelab.formats.lora_set import LoraModule, LoraSet, split_component

ADAPTER_METADATA_KEY = "lora_adapter_metadata"


def _file_key(key: str) -> str:
    component, module_path = split_component(key)
    return f"{component}.{to_file_path(component, module_path)}"


def to_peft_tensors(lora: LoraSet) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for key, module in lora.items():
        tensors[f"{_file_key(key)}.lora_A.weight"] = module.down
        tensors[f"{_file_key(key)}.lora_B.weight"] = module.up
    return tensors


def adapter_config(lora: LoraSet) -> dict[str, dict]:
    """Per component, the LoraConfig fields diffusers rebuilds the adapter from.

    Module names here are the live ones, without CLIP's `text_model.` level: PEFT matches them
    as suffixes, so they find the module whether or not the installed transformers has that level.
    """
    by_component: dict[str, dict[str, LoraModule]] = {}
    for key, module in lora.items():
        component, module_path = split_component(key)
        by_component.setdefault(component, {})[module_path] = module
    configs = {}
    for component, modules in by_component.items():
        rank = Counter(m.rank for m in modules.values()).most_common(1)[0][0]
        alpha = Counter(m.alpha for m in modules.values()).most_common(1)[0][0]
        configs[component] = {
            "r": rank,
            "lora_alpha": alpha,
            "target_modules": sorted(modules),
            "rank_pattern": {path: m.rank for path, m in modules.items() if m.rank != rank},
            "alpha_pattern": {path: m.alpha for path, m in modules.items() if m.alpha != alpha},
        }
    return configs


def write_peft_lora(lora: LoraSet, path: Path, metadata: dict[str, str]) -> Path:
    packed = {
        f"{component}.{field}": value for component, config in adapter_config(lora).items() for field, value in config.items()
    }
    metadata = {**metadata, "format": "pt", ADAPTER_METADATA_KEY: json.dumps(packed, sort_keys=True)}
    return save_tensors(to_peft_tensors(lora), path, metadata)


def is_peft_lora(keys) -> bool:
    return any(".lora_A." in key for key in keys)


def from_peft_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> LoraSet:
    packed = json.loads(metadata.get(ADAPTER_METADATA_KEY, "{}"))
    lora: LoraSet = {}
    for key in tensors:
        if not key.endswith(".lora_A.weight"):
            continue
        file_key = key[: -len(".lora_A.weight")]
        component, module_path = split_component(file_key)
        up = tensors.get(f"{file_key}.lora_B.weight")
        if up is None:
            raise TunelabError(f"LoRA module {file_key} has lora_A but no lora_B weight; the file is incomplete")
        down = tensors[key]
        live_path = from_file_path(component, module_path)
        patterns = packed.get(f"{component}.alpha_pattern", {})
        # Files from before alpha patterns used live names spell them as the file keys do.
        alpha = patterns.get(live_path, patterns.get(module_path, packed.get(f"{component}.lora_alpha")))
        live_key = f"{component}.{live_path}"
        lora[live_key] = LoraModule(down, up, float(alpha) if alpha is not None else float(down.shape[0]))
    paired = {f"{key[: -len('.lora_A.weight')]}.lora_B.weight" for key in tensors if key.endswith(".lora_A.weight")}
    leftover = sorted(key for key in tensors if not key.endswith(".lora_A.weight") and key not in paired)
    if leftover:
        raise TunelabError(f"unrecognised keys in this PEFT LoRA file ({leftover[0]}, {len(leftover)} in all); refusing to guess what they do")
    return lora
