"""The LoRA variants other trainers write, format-free: LoHa, LoKr, and DoRA on top of any of them.

Each holds its tensors under LyCORIS's part names (`hada_w1_a`, `lokr_w2_b`, ...; PEFT's
adapters use the same names), and knows the weight it makes from a base weight with
`merged(weight, multiplier)`. The conventions are LyCORIS's, which A1111 and ComfyUI follow:

- LoHa: delta = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / r (Hadamard product); with Tucker
  cores (`hada_t1`, `hada_t2`) each factor is t x_0 a x_1 b over the kernel.
- LoKr: delta = kron(w1, w2) * scale, each factor either full (`lokr_w1`) or a low-rank pair
  (`lokr_w1_a @ lokr_w1_b`); scale = alpha / r where a factor is low-rank, 1 when both are full.
- DoRA: W' = m * (W + delta) / ||W + delta||, the norm per output row when `dora_scale` is
  (out, 1, ...), per input column when it is (1, in, ...). A weight w other than 1 interpolates
  between the base and that: W + w (W' - W), as A1111 and ComfyUI do.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from tunelab.errors import TunelabError

# Keeps a zero row's norm from dividing by zero (LyCORIS, A1111 and ComfyUI add the same).
NORM_EPS = torch.finfo(torch.float32).eps


def flat_shape(shape) -> tuple[int, int]:
    shape = tuple(shape)
    return shape[0], math.prod(shape[1:])


class DeltaModule(ABC):
    """An adapter that adds a fixed change to W: W' = W + multiplier * delta. Each algorithm (LoRA, LoHa,
    LoKr) says how its factors give the change; the rest is shared."""

    algorithm: ClassVar[str]
    alpha: float

    @property
    @abstractmethod
    def delta_shape(self) -> tuple[int, ...]:
        """The weight shape as far as the factors tell it: (out, in[, kh, kw]), or (out, in * kh * kw) when flattened."""

    @abstractmethod
    def flat_delta(self) -> torch.Tensor:
        """The weight change, scale applied, in fp32: (out, in * kh * kw)."""

    @abstractmethod
    def tensors(self) -> list[torch.Tensor]:
        """The factors as stored."""

    @property
    def dtype(self) -> torch.dtype:
        return self.tensors()[0].dtype

    @property
    def parameter_count(self) -> int:
        return sum(tensor.numel() for tensor in self.tensors())

    def fits(self, weight_shape) -> bool:
        """Whether the change has a place in a weight of this shape (a kernel the factors do not give is taken on trust)."""
        shape = self.delta_shape
        if len(shape) == 4 and tuple(shape[2:]) != (1, 1):
            return tuple(weight_shape) == tuple(shape)
        return flat_shape(weight_shape) == flat_shape(shape)

    def merged(self, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
        delta = self.flat_delta().to(weight.device) * multiplier  # (out, in*kh*kw) in fp32
        return weight + delta.reshape(weight.shape).to(weight.dtype)


def _tucker(core: torch.Tensor, out_factor: torch.Tensor, in_factor: torch.Tensor) -> torch.Tensor:
    """A Tucker core (r, r, kh, kw) with its (r, out) and (r, in) factors as a kernel: (out, in, kh, kw)."""
    return torch.einsum("ijhw,io,jn->onhw", core.float(), out_factor.float(), in_factor.float())


@dataclass
class PartsModule(DeltaModule):
    """A module held as LyCORIS's named parts plus alpha."""

    parts: dict[str, torch.Tensor]
    alpha: float

    REQUIRED: ClassVar[tuple[str, ...]] = ()
    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def tensors(self) -> list[torch.Tensor]:
        return list(self.parts.values())

    def to(self, dtype: torch.dtype):
        return type(self)({name: tensor.to(dtype).contiguous() for name, tensor in self.parts.items()}, self.alpha)


class LohaModule(PartsModule):
    algorithm: ClassVar[str] = "loha"
    REQUIRED = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    OPTIONAL = ("hada_t1", "hada_t2")

    @property
    def rank(self) -> int:
        return self.parts["hada_w1_b"].shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def tucker(self) -> bool:
        return "hada_t1" in self.parts

    def _factor(self, index: int) -> torch.Tensor:
        a, b = self.parts[f"hada_w{index}_a"].float(), self.parts[f"hada_w{index}_b"].float()
        if self.tucker:
            return _tucker(self.parts[f"hada_t{index}"], a, b)  # (out, in, kh, kw)
        return a @ b  # (out, r) @ (r, in*kh*kw)

    @property
    def delta_shape(self) -> tuple[int, ...]:
        if self.tucker:
            core = self.parts["hada_t1"]
            return (self.parts["hada_w1_a"].shape[1], self.parts["hada_w1_b"].shape[1], *core.shape[2:])
        return (self.parts["hada_w1_a"].shape[0], self.parts["hada_w1_b"].shape[1])

    def flat_delta(self) -> torch.Tensor:
        return (self._factor(1) * self._factor(2) * self.scale).flatten(1)  # (out, in*kh*kw)

    def rows(self, start: int, stop: int) -> "LohaModule":
        """The change to rows start:stop of the weight alone (a fused projection's part)."""
        if self.tucker:
            raise TunelabError("a Tucker-decomposed LoHa cannot be split into parts")
        parts = dict(self.parts)
        parts["hada_w1_a"] = parts["hada_w1_a"][start:stop].contiguous()
        parts["hada_w2_a"] = parts["hada_w2_a"][start:stop].contiguous()
        return LohaModule(parts, self.alpha)

    @classmethod
    def stacked(cls, modules: list["LohaModule"]) -> "LohaModule":
        """Parts side by side as one fused module: the `a` factors block-diagonal, each part's scale folded into its w1_a."""
        if any(module.tucker for module in modules):
            raise TunelabError("a Tucker-decomposed LoHa cannot be fused with others")
        rank = sum(module.rank for module in modules)
        out = sum(module.parts["hada_w1_a"].shape[0] for module in modules)
        dtype = modules[0].dtype
        w1_a, w2_a = torch.zeros(out, rank), torch.zeros(out, rank)  # (sum out, sum r), block-diagonal
        row = column = 0
        for module in modules:
            height, width = module.parts["hada_w1_a"].shape
            w1_a[row : row + height, column : column + width] = module.parts["hada_w1_a"].float() * module.scale
            w2_a[row : row + height, column : column + width] = module.parts["hada_w2_a"].float()
            row, column = row + height, column + width
        parts = {
            "hada_w1_a": w1_a,
            "hada_w1_b": torch.cat([module.parts["hada_w1_b"].float() for module in modules]),  # (sum r, in)
            "hada_w2_a": w2_a,
            "hada_w2_b": torch.cat([module.parts["hada_w2_b"].float() for module in modules]),
        }
        return LohaModule(parts, float(rank)).to(dtype)


class LokrModule(PartsModule):
    algorithm: ClassVar[str] = "lokr"
    OPTIONAL = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")

    @property
    def rank(self) -> int | None:
        """The rank of the low-rank factor(s); None when both factors are full."""
        for name in ("lokr_w2_b", "lokr_w1_b"):
            if name in self.parts:
                return self.parts[name].shape[0]
        return None

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.rank is not None else 1.0

    def _w1(self) -> torch.Tensor:
        if "lokr_w1" in self.parts:
            return self.parts["lokr_w1"].float()
        return self.parts["lokr_w1_a"].float() @ self.parts["lokr_w1_b"].float()  # (a, r) @ (r, c)

    def _w2(self) -> torch.Tensor:
        if "lokr_w2" in self.parts:
            return self.parts["lokr_w2"].float()
        a, b = self.parts["lokr_w2_a"].float(), self.parts["lokr_w2_b"].float()
        if "lokr_t2" in self.parts:
            return _tucker(self.parts["lokr_t2"], a, b)  # (b, d, kh, kw)
        return a @ b  # (b, r) @ (r, d[*kh*kw])

    def w1_shape(self) -> tuple[int, int]:
        if "lokr_w1" in self.parts:
            return tuple(self.parts["lokr_w1"].shape)
        return self.parts["lokr_w1_a"].shape[0], self.parts["lokr_w1_b"].shape[1]

    def w2_shape(self) -> tuple[int, ...]:
        if "lokr_w2" in self.parts:
            return tuple(self.parts["lokr_w2"].shape)
        if "lokr_t2" in self.parts:
            return (self.parts["lokr_w2_a"].shape[1], self.parts["lokr_w2_b"].shape[1], *self.parts["lokr_t2"].shape[2:])
        return self.parts["lokr_w2_a"].shape[0], self.parts["lokr_w2_b"].shape[1]

    @property
    def delta_shape(self) -> tuple[int, ...]:
        (a, c), w2 = self.w1_shape(), self.w2_shape()
        return (a * w2[0], c * w2[1], *w2[2:])

    def flat_delta(self) -> torch.Tensor:
        w1, w2 = self._w1(), self._w2()
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]  # (a, c, 1, 1): the kernel lives in w2
        return (torch.kron(w1, w2.contiguous()) * self.scale).flatten(1)  # (a*b, c*d*kh*kw)

    def rows(self, start: int, stop: int) -> "LokrModule":
        """Rows start:stop of the change, when they are whole rows of w1 (each spans len(w2) weight rows)."""
        height = self.w2_shape()[0]
        if start % height or stop % height:
            raise TunelabError(f"this LoKr's rows {start}:{stop} do not fall on its Kronecker blocks ({height} rows each); it cannot be split")
        parts = dict(self.parts)
        first = "lokr_w1" if "lokr_w1" in parts else "lokr_w1_a"
        parts[first] = parts[first][start // height : stop // height].contiguous()
        return LokrModule(parts, self.alpha)


@dataclass
class DoraModule:
    """A weight-decomposed adapter: `inner`'s change, then each row's (or column's) norm set to `dora_scale`."""

    inner: DeltaModule
    dora_scale: torch.Tensor  # (out, 1[, 1, 1]) on the output axis, (1, in[, 1, 1]) on the input axis

    @property
    def algorithm(self) -> str:
        return "dora" if self.inner.algorithm == "lora" else f"{self.inner.algorithm}+dora"

    @property
    def alpha(self) -> float:
        return self.inner.alpha

    @property
    def rank(self):
        return self.inner.rank

    @property
    def delta_shape(self) -> tuple[int, ...]:
        return self.inner.delta_shape

    @property
    def on_output_axis(self) -> bool:
        out = self.delta_shape[0]
        return self.dora_scale.shape[0] == out and self.dora_scale.numel() == out

    def tensors(self) -> list[torch.Tensor]:
        return [*self.inner.tensors(), self.dora_scale]

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    @property
    def parameter_count(self) -> int:
        return self.inner.parameter_count + self.dora_scale.numel()

    def fits(self, weight_shape) -> bool:
        if not self.inner.fits(weight_shape):
            return False
        axis = 0 if self.on_output_axis else 1
        return self.dora_scale.numel() == weight_shape[axis]

    def to(self, dtype: torch.dtype) -> "DoraModule":
        return DoraModule(self.inner.to(dtype), self.dora_scale.to(dtype).contiguous())

    def merged(self, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
        base = weight.float()
        full = base + self.inner.flat_delta().to(weight.device).reshape(weight.shape)  # W + delta, fp32
        if self.on_output_axis:
            shape = (weight.shape[0], *[1] * (weight.dim() - 1))
            norm = full.flatten(1).norm(dim=1).reshape(shape)  # (out, 1, ...)
        else:
            shape = (1, weight.shape[1], *[1] * (weight.dim() - 2))
            norm = full.transpose(0, 1).flatten(1).norm(dim=1).reshape(shape)  # (1, in, ...)
        decomposed = full * (self.dora_scale.float().to(weight.device).reshape(shape) / (norm + NORM_EPS))
        return (base + multiplier * (decomposed - base)).to(weight.dtype)

    def rows(self, start: int, stop: int) -> "DoraModule":
        if not self.on_output_axis:
            raise TunelabError("a DoRA whose magnitudes are per input column cannot be split into parts")
        return DoraModule(self.inner.rows(start, stop), self.dora_scale[start:stop].contiguous())
