"""PEFT/diffusers LoRA files: `unet.<path>.lora_A.weight` / `lora_B.weight`, alphas in adapter metadata.

This is what diffusers' `save_lora_weights` writes and its `load_lora_weights` reads:
the adapter config of each component is stored as JSON under `lora_adapter_metadata`,
its keys prefixed with the component name. The variants are PEFT's own adapters, under PEFT's
parameter names: DoRA adds `lora_magnitude_vector` (per output row) and `use_dora`; LoHa
(`hada_w1_a`, ...) and LoKr (`lokr_w1`, ...) components carry `peft_type` LOHA / LOKR, and their
config is the one PEFT rebuilds the same parameters from (`r`, `alpha`, LoKr's `decompose_both`
and `decompose_factor`). PEFT scales a LoKr by alpha / r even when both factors are full, where
LyCORIS scales by 1: reading folds PEFT's scale into `lokr_w1`, writing gives such modules alpha = r.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from peft.tuners.lokr.layer import factorization

from tunelab.errors import TunelabError
from tunelab.formats.adapter_modules import DoraModule, LohaModule, LokrModule
from tunelab.formats.lora_set import AdapterModule, LoraModule, LoraSet, algorithm_title, split_component
from tunelab.formats.lycoris import module_from_parts
from tunelab.formats.module_paths import from_file_path, to_file_path
from tunelab.formats.safetensors_io import save_tensors

ADAPTER_METADATA_KEY = "lora_adapter_metadata"
# PEFT parameter name -> LyCORIS part name (LoHa and LoKr parts are named alike in both).
_PEFT_TO_LYCORIS = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight", "lora_magnitude_vector": "dora_scale",
                    "lora_magnitude_vector.weight": "dora_scale"}  # the latter: older PEFT/diffusers files
_PEFT_PARTS = (*_PEFT_TO_LYCORIS, *LohaModule.REQUIRED, *LohaModule.OPTIONAL, *LokrModule.OPTIONAL)
_PEFT_TYPES = {"lora": "LORA", "dora": "LORA", "loha": "LOHA", "lokr": "LOKR"}


def _file_key(key: str) -> str:
    component, module_path = split_component(key)
    return f"{component}.{to_file_path(component, module_path)}"


def _peft_parts(key: str, module: AdapterModule) -> dict[str, torch.Tensor]:
    if isinstance(module, LoraModule):
        return {"lora_A.weight": module.down, "lora_B.weight": module.up}
    if isinstance(module, DoraModule):
        if not isinstance(module.inner, LoraModule) or not module.on_output_axis:
            kind = "magnitudes per input column" if isinstance(module.inner, LoraModule) else algorithm_title(module.algorithm)
            raise TunelabError(f"{key}: PEFT's DoRA has no {kind} (it keeps one magnitude per output row); keep this file in kohya layout")
        out = module.dora_scale.numel()
        magnitude = module.dora_scale.reshape(1, out, 1, 1) if module.inner.down.dim() == 4 else module.dora_scale.reshape(out)
        return {**_peft_parts(key, module.inner), "lora_magnitude_vector": magnitude}
    return dict(module.parts)


def to_peft_tensors(lora: LoraSet) -> dict[str, torch.Tensor]:
    return {f"{_file_key(key)}.{part}": tensor for key, module in lora.items() for part, tensor in _peft_parts(key, module).items()}


def _common(values) -> object:
    return Counter(values).most_common(1)[0][0]


def _patterned(modules: dict[str, AdapterModule], ranks: dict[str, int], alphas: dict[str, float], alpha_field: str) -> dict:
    rank, alpha = _common(ranks.values()), _common(alphas.values())
    return {
        "r": rank,
        alpha_field: alpha,
        "target_modules": sorted(modules),
        "rank_pattern": {path: value for path, value in ranks.items() if value != rank},
        "alpha_pattern": {path: value for path, value in alphas.items() if value != alpha},
    }


def _lokr_factor(component: str, modules: dict[str, LokrModule]) -> int:
    """The one decompose_factor under which PEFT splits every module's dimensions as the file does."""
    def splits(module: LokrModule, factor: int) -> bool:
        # Output rows always tell the split; input columns only where w2 keeps its kernel apart
        # (a flattened w2 holds in / c * kh * kw columns, which hides the input width).
        (a, c), w2 = module.w1_shape(), module.w2_shape()
        rows_fit = factorization(module.delta_shape[0], factor) == (a, w2[0])
        return rows_fit and (len(w2) != 4 or factorization(c * w2[1], factor) == (c, w2[1]))

    candidates = [-1, *sorted({module.w1_shape()[0] for module in modules.values()})]
    for factor in candidates:
        if all(splits(module, factor) for module in modules.values()):
            return factor
    raise TunelabError(f"{component}: PEFT's LoKr cannot rebuild these Kronecker factors (no one decompose_factor splits every "
                       "module as this file does); keep this file in kohya layout")


def _lokr_config(component: str, modules: dict[str, LokrModule]) -> dict:
    decompose_both = any("lokr_w1_a" in module.parts for module in modules.values())
    ranks, alphas = {}, {}
    for path, module in modules.items():
        if module.rank is not None:
            ranks[path], alphas[path] = module.rank, module.alpha
        else:  # both factors full: a rank PEFT keeps them full at, and scale alpha / r = 1 as in LyCORIS
            (a, c), w2 = module.w1_shape(), module.w2_shape()
            full = max(w2[0], w2[1], *((a, c) if decompose_both else ()))
            ranks[path], alphas[path] = full, float(full)
    config = _patterned(modules, ranks, alphas, "alpha")
    config.update(decompose_both=decompose_both, decompose_factor=_lokr_factor(component, modules),
                  use_effective_conv2d=any("lokr_t2" in module.parts for module in modules.values()))
    return config


def adapter_config(lora: LoraSet) -> dict[str, dict]:
    """Per component, the adapter config fields PEFT (and diffusers) rebuild the adapter from.

    Module names here are the live ones, without CLIP's `text_model.` level: PEFT matches them
    as suffixes, so they find the module whether or not the installed transformers has that level.
    """
    by_component: dict[str, dict[str, AdapterModule]] = {}
    for key, module in lora.items():
        component, module_path = split_component(key)
        by_component.setdefault(component, {})[module_path] = module
    configs = {}
    for component, modules in by_component.items():
        kinds = sorted({module.algorithm for module in modules.values()})
        if len(kinds) > 1:
            shown = " and ".join(algorithm_title(kind) for kind in kinds)
            raise TunelabError(f"{component} mixes {shown} modules, and a PEFT adapter has one type; keep this file in kohya layout")
        kind = kinds[0]
        if kind not in _PEFT_TYPES:
            raise TunelabError(f"PEFT has no {algorithm_title(kind)} adapter; keep this file in kohya layout")
        if kind == "lokr":
            config = _lokr_config(component, modules)
        else:
            config = _patterned(modules, {path: m.rank for path, m in modules.items()},
                                {path: m.alpha for path, m in modules.items()}, "lora_alpha" if kind in ("lora", "dora") else "alpha")
            if kind == "dora":
                config["use_dora"] = True
            if kind == "loha":
                config["use_effective_conv2d"] = any(module.tucker for module in modules.values())
        if kind != "lora":
            config["peft_type"] = _PEFT_TYPES[kind]
        configs[component] = config
    return configs


def write_peft_lora(lora: LoraSet, path: Path, metadata: dict[str, str]) -> Path:
    packed = {
        f"{component}.{field}": value for component, config in adapter_config(lora).items() for field, value in config.items()
    }
    metadata = {**metadata, "format": "pt", ADAPTER_METADATA_KEY: json.dumps(packed, sort_keys=True)}
    return save_tensors(to_peft_tensors(lora), path, metadata)


def is_peft_lora(keys) -> bool:
    return any(f".{part}" in key for key in keys for part in ("lora_A.", "hada_w1_a", "lokr_w1"))


def _split_part(key: str) -> tuple[str, str] | None:
    for part in _PEFT_PARTS:
        if key.endswith(f".{part}"):
            return key[: -len(part) - 1], part
    return None


def _module(file_key: str, parts: dict[str, torch.Tensor], packed: dict, component: str, live_path: str, module_path: str) -> AdapterModule:
    def setting(field: str, default_field: str):
        # Files from before patterns used live names spell them as the file keys do.
        patterns = packed.get(f"{component}.{field}_pattern", {})
        return patterns.get(live_path, patterns.get(module_path, packed.get(f"{component}.{default_field}")))

    lycoris_parts = {_PEFT_TO_LYCORIS.get(part, part): tensor for part, tensor in parts.items()}
    if "lora_up.weight" in lycoris_parts and "dora_scale" in lycoris_parts:
        out = lycoris_parts["lora_up.weight"].shape[0]
        extra = lycoris_parts["lora_down.weight"].dim() - 1
        lycoris_parts["dora_scale"] = lycoris_parts["dora_scale"].reshape(out, *[1] * extra)  # PEFT: (out,) or (1, out, 1, 1)
    is_lora = "lora_down.weight" in lycoris_parts
    alpha = setting("alpha", "lora_alpha" if is_lora else "alpha")
    module = module_from_parts(file_key, lycoris_parts, float(alpha) if alpha is not None else None, layout="PEFT")
    if isinstance(module, LokrModule) and module.rank is None:
        rank = setting("rank", "r")
        if rank is not None and alpha is not None:  # PEFT's alpha / r, folded in: LyCORIS scales full factors by 1
            module.parts["lokr_w1"] = module.parts["lokr_w1"] * (float(alpha) / float(rank))
    return module


def from_peft_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> LoraSet:
    packed = json.loads(metadata.get(ADAPTER_METADATA_KEY, "{}"))
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    leftover = []
    for key, tensor in tensors.items():
        split = _split_part(key)
        if split is None:
            leftover.append(key)
        else:
            grouped.setdefault(split[0], {})[split[1]] = tensor
    if leftover:
        raise TunelabError(f"unrecognised keys in this PEFT LoRA file ({sorted(leftover)[0]}, {len(leftover)} in all); refusing to guess what they do")
    lora: LoraSet = {}
    for file_key, parts in sorted(grouped.items()):
        component, module_path = split_component(file_key)
        live_path = from_file_path(component, module_path)
        lora[f"{component}.{live_path}"] = _module(file_key, parts, packed, component, live_path, module_path)
    return lora
