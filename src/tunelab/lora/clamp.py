"""Outlier clamps for extracted LoRA factors: kohya's rule and tunelab's absolute-value rule.

Both take the factors of one module, up = U·S (m, k) and down = Vh (k, n), pool their values, take
a quantile q of the pool and clamp both factors to [-limit, limit]. They differ in the pool:

- kohya (sd-scripts' extract_lora_from_models.py): the limit is the q-quantile of the *signed*
  values. With values spread evenly around zero, about (1 - q) of them lie above it and as many
  below -limit, so about 2 (1 - q) are clipped (2% at 0.99). Because it reads signs, it depends on
  the sign each singular pair was given (see svd.with_sign_convention).
- absolute: the limit is the q-quantile of the *absolute* values, so (1 - q) of them are clipped
  (1% at 0.99), whatever the signs.

Quantiles interpolate linearly between order statistics, as torch.quantile does.
"""

from __future__ import annotations

from typing import Literal

import torch

ClampMode = Literal["kohya", "absolute"]


def quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of each row of values (B, N), linear interpolation: (B,).

    Two kthvalue calls rather than torch.quantile, which refuses inputs of more than 2^24 values.
    """
    count = values.shape[1]
    position = q * (count - 1)
    below = int(position)
    fraction = position - below
    lower = values.kthvalue(below + 1, dim=1).values  # (B,)
    upper = values.kthvalue(min(below + 2, count), dim=1).values  # (B,)
    return lower + (upper - lower) * fraction


def clamp_limit(up: torch.Tensor, down: torch.Tensor, mode: ClampMode, q: float) -> torch.Tensor:
    """Per batch element, the limit both factors are clamped to: up (B, m, k), down (B, k, n) -> (B,)."""
    pooled = torch.cat([up.flatten(1), down.flatten(1)], dim=1)  # (B, m*k + k*n)
    if mode == "absolute":
        pooled = pooled.abs()
    return quantile(pooled, q)


def clamp_factors(up: torch.Tensor, down: torch.Tensor, mode: ClampMode, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Both factors clamped to [-limit, limit] by the mode's limit; q >= 1 leaves them as they are."""
    if q >= 1.0:
        return up, down
    limit = clamp_limit(up, down, mode, q)[:, None, None]  # (B, 1, 1)
    # A negative limit (kohya's rule on factors mostly below zero) would make clamp's bounds cross:
    # like kohya's script, every value then becomes that limit (torch.clamp returns max when min > max).
    return up.clamp(-limit, limit), down.clamp(-limit, limit)
