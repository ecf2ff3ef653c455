"""The format-free LoRA: what every LoRA file holds, whatever its key names."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LoraModule:
    down: torch.Tensor  # (r, in) for linear, (r, in, kh, kw) for conv
    up: torch.Tensor  # (out, r) for linear, (out, r, 1, 1) for conv
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self) -> torch.Tensor:
        """The weight change this module adds: (alpha / r) * up @ down, shaped like the base weight."""
        down = self.down.float().flatten(1)  # (r, in*kh*kw)
        up = self.up.float().flatten(1)  # (out, r)
        delta = (up @ down) * self.scale  # (out, in*kh*kw)
        return delta.reshape(self.up.shape[0], *self.down.shape[1:])

    def with_alpha(self, alpha: float) -> "LoraModule":
        """The same delta under another alpha: the change of scale alpha / r is folded into `up`."""
        return LoraModule(self.down, self.up * (self.scale * self.rank / alpha), float(alpha))

    def to(self, dtype: torch.dtype) -> "LoraModule":
        return LoraModule(self.down.to(dtype).contiguous(), self.up.to(dtype).contiguous(), self.alpha)


# Keys are "<component>.<module path>", e.g. "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q".
LoraSet = dict[str, LoraModule]


def split_component(key: str) -> tuple[str, str]:
    component, _, module_path = key.partition(".")
    return component, module_path
