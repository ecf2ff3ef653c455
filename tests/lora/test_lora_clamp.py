"""The two clamp rules on constructed factors: kohya's signed pooled quantile vs the absolute one."""

from __future__ import annotations

import pytest
import torch

from tunelab.lora.clamp import clamp_factors, clamp_limit, quantile
from tunelab.lora.svd import truncated_svd, with_sign_convention


def integer_factors():
    """up (1, 10, 10) and down (1, 10, 10) holding the integers -100..99 once each, shuffled between them."""
    values = torch.arange(-100, 100, dtype=torch.float32)[torch.randperm(200, generator=torch.Generator().manual_seed(0))]
    return values[:100].reshape(1, 10, 10), values[100:].reshape(1, 10, 10)


def clipped(before: tuple[torch.Tensor, torch.Tensor], after: tuple[torch.Tensor, torch.Tensor]) -> set[int]:
    return {int(value) for old, new in zip(before, after) for value in old[old != new].tolist()}


def test_kohya_clamps_to_the_quantile_of_the_signed_pooled_values():
    up, down = integer_factors()
    # Sorted signed values -100..99: the 0.9 quantile sits at position 0.9 * 199 = 179.1, i.e. 79.1.
    assert float(clamp_limit(up, down, "kohya", 0.9)) == pytest.approx(79.1)
    clamped = clamp_factors(up, down, "kohya", 0.9)
    # Above 79.1 on both sides: 80..99 and -100..-80, 41 of 200 values (about twice 1 - q).
    assert clipped((up, down), clamped) == set(range(80, 100)) | set(range(-100, -79))
    assert max(float(tensor.abs().max()) for tensor in clamped) == pytest.approx(79.1)


def test_absolute_clamps_to_the_quantile_of_the_absolute_pooled_values():
    up, down = integer_factors()
    # Sorted |values|: 0, 1, 1, 2, 2, ..., 99, 99, 100; positions 179 and 180 both hold 90.
    assert float(clamp_limit(up, down, "absolute", 0.9)) == pytest.approx(90.0)
    clamped = clamp_factors(up, down, "absolute", 0.9)
    # Beyond 90 in magnitude: 91..99 and -100..-91, 19 of 200 values (about 1 - q).
    assert clipped((up, down), clamped) == set(range(91, 100)) | set(range(-100, -90))


def test_quantile_one_leaves_the_factors_alone_and_the_quantile_matches_torch():
    up, down = integer_factors()
    for mode in ("kohya", "absolute"):
        same_up, same_down = clamp_factors(up, down, mode, 1.0)
        assert torch.equal(same_up, up) and torch.equal(same_down, down)
    values = torch.randn(3, 1001, generator=torch.Generator().manual_seed(1))
    for q in (0.5, 0.9, 0.99, 0.999):
        torch.testing.assert_close(quantile(values, q), torch.quantile(values, q, dim=1))


def test_kohya_rule_reads_signs_and_the_sign_convention_fixes_them():
    matrix = torch.randn(1, 40, 60, generator=torch.Generator().manual_seed(2))  # (1, m, n)
    u, s, vh = truncated_svd(matrix, 8)
    # Negating singular pairs leaves the SVD valid and the absolute limit as it was, but moves kohya's. All of
    # them: the signed values then mirror, so kohya's 0.99 quantile becomes minus the 0.01 one, whichever signs
    # this machine's SVD chose (negating a few can miss the largest values).
    flipped_u, flipped_vh = -u, -vh
    original, flipped = (u * s[:, None, :], vh), (flipped_u * s[:, None, :], flipped_vh)
    torch.testing.assert_close(clamp_limit(*original, "absolute", 0.99), clamp_limit(*flipped, "absolute", 0.99))
    assert not torch.allclose(clamp_limit(*original, "kohya", 0.99), clamp_limit(*flipped, "kohya", 0.99))
    # With the convention, both give the same factors, hence the same kohya limit.
    fixed_u, fixed_vh = with_sign_convention(u, vh)
    again_u, again_vh = with_sign_convention(flipped_u, flipped_vh)
    torch.testing.assert_close(fixed_u, again_u)
    torch.testing.assert_close(fixed_vh, again_vh)
    largest = fixed_vh.gather(-1, fixed_vh.abs().argmax(-1, keepdim=True))
    assert bool((largest > 0).all())
