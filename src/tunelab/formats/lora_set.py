"""The format-free LoRA: what every LoRA file holds, whatever its key names.

A set maps module keys to adapters: plain LoRA (`LoraModule`, here), or the variants other
trainers write (LoHa, LoKr, DoRA: formats/adapter_modules.py). Every adapter makes its module's
new weight with `merged(weight, multiplier)`; tools that work on low-rank factors (resize,
combine) take plain LoRA only (`require_plain_lora`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

import torch

from tunelab.errors import TunelabError
from tunelab.formats.adapter_modules import DeltaModule, DoraModule, LohaModule, LokrModule

ALGORITHM_TITLES = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr", "dora": "DoRA", "loha+dora": "LoHa with DoRA",
                    "lokr+dora": "LoKr with DoRA"}


@dataclass
class LoraModule(DeltaModule):
    down: torch.Tensor  # (r, in) for linear, (r, in, kh, kw) for conv
    up: torch.Tensor  # (out, r) for linear, (out, r, 1, 1) for conv
    alpha: float

    algorithm: ClassVar[str] = "lora"

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def delta_shape(self) -> tuple[int, ...]:
        return (self.up.shape[0], *self.down.shape[1:])

    def tensors(self) -> list[torch.Tensor]:
        return [self.down, self.up]

    def fits(self, weight_shape) -> bool:
        """Equal shapes, or equal but for a trailing 1x1 kernel: a linear LoRA fits a 1x1 conv and back
        (SD 1.x projects attention inputs with 1x1 convs where SD 2.x uses linear layers)."""
        def squeezed(shape):
            shape = tuple(shape)
            return shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else shape

        return squeezed(self.delta_shape) == squeezed(weight_shape)

    def delta(self) -> torch.Tensor:
        """The weight change this module adds: (alpha / r) * up @ down, shaped like the base weight."""
        return self.flat_delta().reshape(self.up.shape[0], *self.down.shape[1:])

    def flat_delta(self) -> torch.Tensor:
        down = self.down.float().flatten(1)  # (r, in*kh*kw)
        up = self.up.float().flatten(1)  # (out, r)
        return (up @ down) * self.scale  # (out, in*kh*kw)

    def with_alpha(self, alpha: float) -> "LoraModule":
        """The same delta under another alpha: the change of scale alpha / r is folded into `up`."""
        return LoraModule(self.down, self.up * (self.scale * self.rank / alpha), float(alpha))

    def to(self, dtype: torch.dtype) -> "LoraModule":
        return LoraModule(self.down.to(dtype).contiguous(), self.up.to(dtype).contiguous(), self.alpha)

    def rows(self, start: int, stop: int) -> "LoraModule":
        return LoraModule(self.down, self.up[start:stop].contiguous(), self.alpha)


AdapterModule = Union[LoraModule, LohaModule, LokrModule, DoraModule]

# Keys are "<component>.<module path>", e.g. "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q".
LoraSet = dict[str, AdapterModule]

__all__ = ["AdapterModule", "DoraModule", "LohaModule", "LokrModule", "LoraModule", "LoraSet", "algorithm_title",
           "algorithms", "require_plain_lora", "split_component"]


def split_component(key: str) -> tuple[str, str]:
    component, _, module_path = key.partition(".")
    return component, module_path


def algorithm_title(algorithm: str) -> str:
    return ALGORITHM_TITLES.get(algorithm, algorithm)


def algorithms(lora: LoraSet) -> list[str]:
    """The algorithms a set holds, most common first."""
    counts: dict[str, int] = {}
    for module in lora.values():
        counts[module.algorithm] = counts.get(module.algorithm, 0) + 1
    return sorted(counts, key=lambda name: -counts[name])


def require_plain_lora(lora: LoraSet, tool: str, source: str = "this file") -> None:
    """Tools that work on up @ down factors refuse the other algorithms by name."""
    for key, module in lora.items():
        if not isinstance(module, LoraModule):
            title = algorithm_title(module.algorithm)
            raise TunelabError(
                f"{source} holds {title} modules ({key}); {tool} works on plain LoRA only, since {title} "
                "is not an up @ down product (merge, convert, info and generation read it)"
            )
