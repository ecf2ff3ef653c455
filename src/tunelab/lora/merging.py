"""Bake LoRA deltas into a model's weights, and check first that a LoRA fits the model.

Every algorithm makes its module's new weight from the current one (`merged`): LoRA, LoHa and LoKr
add their change times the weight; DoRA renormalises W + delta and interpolates by the weight.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch

from tunelab.errors import TunelabError
from tunelab.formats.lora_set import AdapterModule, LoraSet

WeightedLoras = list[tuple[LoraSet, float]]


def delta_shape(module: AdapterModule) -> tuple[int, ...]:
    return module.delta_shape


def same_weight_shape(first, second) -> bool:
    """Equal, or equal but for a trailing 1x1 kernel: a linear LoRA fits a 1x1 conv and back
    (SD 1.x projects attention inputs with 1x1 convs where SD 2.x uses linear layers)."""
    def squeezed(shape):
        shape = tuple(shape)
        return shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else shape

    return squeezed(first) == squeezed(second)


def _listed(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def check_fits(lora: LoraSet, weight_shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """A LoRA for another architecture is an error that names the modules that do not match."""
    missing = sorted(key for key in lora if key not in weight_shapes)
    mismatched = sorted(
        f"{key} (LoRA {tuple(delta_shape(module))}, model {tuple(weight_shapes[key])})"
        for key, module in lora.items()
        if key in weight_shapes and not module.fits(weight_shapes[key])
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} modules not in the model: {_listed(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with other shapes: {_listed(mismatched, 3)}")
    if problems:
        raise TunelabError(f"{source} does not fit this model (a LoRA for another architecture?): {'; '.join(problems)}")


def apply_loras(modules: Mapping[str, torch.nn.Module], loras: WeightedLoras) -> None:
    """Each module's weight becomes what its adapter makes of it at that weight (LoRA: W += weight * (alpha / r)
    * up @ down), in place, one LoRA after another."""
    with torch.no_grad():
        for lora, weight in loras:
            for key, module in lora.items():
                target = modules[key].weight
                target.copy_(module.merged(target, weight))  # (out, in[, kh, kw])


@contextmanager
def applied(modules: Mapping[str, torch.nn.Module], loras: WeightedLoras) -> Iterator[None]:
    """The LoRAs baked in for the duration of the block; the original weights come back after."""
    keys = {key for lora, _ in loras for key in lora}
    originals = {key: modules[key].weight.detach().clone() for key in keys}
    try:
        apply_loras(modules, loras)
        yield
    finally:
        with torch.no_grad():
            for key, weight in originals.items():
                modules[key].weight.copy_(weight)
