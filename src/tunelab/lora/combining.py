"""Several weighted LoRAs as one: stacked ranks (exact) or re-factorised at a chosen rank (SVD)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from tunelab.errors import TunelabError
from tunelab.formats.lora_set import LoraModule, LoraSet, require_plain_lora
from tunelab.lora.merging import delta_shape, same_weight_shape
from tunelab.lora.resizing import ResizedModule, resize_lora


@dataclass
class WeightedLora:
    lora: LoraSet
    weight: float
    name: str  # where it came from, for error messages


def concat(loras: list[WeightedLora]) -> LoraSet:
    """Ranks stacked per module: the result's delta is exactly sum_i weight_i * delta_i.

    Each part's weight and its own scale alpha_i / r_i are folded into its `up`. Every module
    gets one alpha, the largest stacked rank: diffusers' loader reads per-module alphas of kohya
    files wrongly (0.42 drops them for attention modules), a single alpha it reads right.
    """
    parts: dict[str, list[tuple[LoraModule, float, str]]] = defaultdict(list)
    for item in loras:
        require_plain_lora(item.lora, "lora combine", item.name)
        for key, module in item.lora.items():
            parts[key].append((module, item.weight, item.name))
    combined: LoraSet = {}
    for key, modules in parts.items():
        first, _, first_name = modules[0]
        downs, ups = [], []
        for module, weight, name in modules:
            if not same_weight_shape(delta_shape(module), delta_shape(first)):
                raise TunelabError(
                    f"{first_name} and {name} disagree on {key}: {delta_shape(first)} vs {delta_shape(module)}; are they for different models?"
                )
            downs.append(module.down.float().reshape(module.rank, *first.down.shape[1:]))  # (r_i, in[, kh, kw])
            ups.append(module.up.float().reshape(first.up.shape[0], module.rank, *first.up.shape[2:]) * (weight * module.scale))  # (out, r_i[, 1, 1])
        down = torch.cat(downs, dim=0)  # (sum r_i, in[, kh, kw])
        combined[key] = LoraModule(down, torch.cat(ups, dim=1), float(down.shape[0]))  # scale 1
    alpha = max(module.rank for module in combined.values())
    return {key: module.with_alpha(alpha) for key, module in combined.items()}


def combine_svd(loras: list[WeightedLora], rank: int) -> tuple[LoraSet, list[ResizedModule]]:
    """The weighted sum, re-factorised at `rank` by an exact SVD of each module's summed delta.

    Every module gets alpha = `rank` (as in `concat`, one alpha for all), also one whose sum allows less.
    """
    resized, report = resize_lora(concat(loras), rank=rank)
    return {key: module.with_alpha(float(rank)) for key, module in resized.items()}, report
