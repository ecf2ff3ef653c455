"""Change a LoRA's rank by SVD, keeping its effective scale; fixed rank or chosen per module from the spectrum.

The dynamic methods are those of kohya's resize_lora.py, on each module's singular values S:
  sv_ratio=X       keep the singular values at least S[0] / X
  sv_fro=X         the fewest that keep a fraction X of the Frobenius norm, sqrt(sum S_k^2 / sum S^2)
  sv_cumulative=X  the fewest that keep a fraction X of the sum of singular values
(kohya's counting keeps one value more in some cases; these are the plain definitions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.errors import TunelabError
from tunelab.formats.lora_set import LoraModule, LoraSet, require_plain_lora
from tunelab.lora.svd import factored_svd, frobenius_kept

DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")
# A fraction this close to the target counts as reaching it (sums of float32 squares are not exact).
FRACTION_TOLERANCE = 1e-6


@dataclass
class Dynamic:
    method: str
    value: float

    @classmethod
    def parse(cls, spec: str) -> "Dynamic":
        method, equals, value = spec.partition("=")
        if method not in DYNAMIC_METHODS or not equals:
            raise TunelabError(f"--dynamic takes METHOD=VALUE with METHOD one of {', '.join(DYNAMIC_METHODS)}, got {spec!r}")
        try:
            number = float(value)
        except ValueError:
            raise TunelabError(f"--dynamic {spec!r}: {value!r} is not a number") from None
        if method == "sv_ratio" and number < 1:
            raise TunelabError(f"--dynamic sv_ratio must be at least 1 (largest / smallest kept singular value), got {number:g}")
        if method != "sv_ratio" and not 0 < number <= 1:
            raise TunelabError(f"--dynamic {method} is a fraction in (0, 1], got {number:g}")
        return cls(method, number)

    def rank(self, singular_values: torch.Tensor) -> int:
        s = singular_values
        if self.method == "sv_ratio":
            return int((s * self.value >= s[0]).sum())
        kept = s.square() if self.method == "sv_fro" else s
        fraction = kept.cumsum(0) / kept.sum()  # (k,)
        if self.method == "sv_fro":
            fraction = fraction.sqrt()
        return int((fraction < self.value - FRACTION_TOLERANCE).sum()) + 1


@dataclass
class ResizedModule:
    key: str
    old_rank: int
    new_rank: int
    frobenius_kept: float  # share of the module's delta (Frobenius norm) the new rank keeps


def resize_lora(lora: LoraSet, rank: int | None = None, dynamic: Dynamic | None = None) -> tuple[LoraSet, list[ResizedModule]]:
    """New factors per module, with alpha_new = alpha / rank * rank_new so that alpha / rank is unchanged.

    `rank` alone is the new rank; with `dynamic` it caps the rank the method picks. A module keeps
    at most the rank it has (a higher rank would only add zero singular values).
    """
    require_plain_lora(lora, "lora resize")
    if rank is None and dynamic is None:
        raise TunelabError("give --rank, --dynamic METHOD=VALUE, or both (the rank then caps the dynamic choice)")
    if rank is not None and rank < 1:
        raise TunelabError(f"--rank must be at least 1, got {rank}")
    resized: LoraSet = {}
    report: list[ResizedModule] = []
    for key, module in lora.items():
        u, s, vh = factored_svd(module.up.float().flatten(1), module.down.float().flatten(1))  # (out, k), (k,), (k, n)
        chosen = dynamic.rank(s) if dynamic is not None and s[0] > 0 else (rank or module.rank)
        new_rank = max(1, min(chosen, rank or chosen, s.shape[0]))
        kernel = [1] * (module.up.dim() - 2)
        resized[key] = LoraModule(
            vh[:new_rank].reshape(new_rank, *module.down.shape[1:]).contiguous(),  # (r', in[, kh, kw])
            (u[:, :new_rank] * s[:new_rank]).reshape(module.up.shape[0], new_rank, *kernel).contiguous(),  # (out, r'[, 1, 1])
            module.alpha / module.rank * new_rank,  # same scale, so up @ down keeps its meaning
        )
        report.append(ResizedModule(key, module.rank, new_rank, frobenius_kept(s, new_rank)))
    return resized, report
