"""The truncated SVD behind extraction: LAPACK's answer, for wide, tall and square batches."""

from __future__ import annotations

import pytest
import torch

from tunelab.lora.svd import truncated_svd


@pytest.mark.parametrize("shape", [(3, 20, 50), (3, 50, 20), (2, 16, 16)])
def test_truncated_svd_matches_lapack(shape):
    matrices = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # (B, m, n)
    u, s, vh = truncated_svd(matrices, 7)
    lapack_u, lapack_s, lapack_vh = torch.linalg.svd(matrices, full_matrices=False)

    torch.testing.assert_close(s, lapack_s[:, :7])
    best = (lapack_u[:, :, :7] * lapack_s[:, None, :7]) @ lapack_vh[:, :7]  # the best rank-7 approximation
    torch.testing.assert_close((u * s[:, None, :]) @ vh, best)
    torch.testing.assert_close(u.mT @ u, torch.eye(7, dtype=torch.float64).expand(shape[0], 7, 7))
    torch.testing.assert_close(vh @ vh.mT, torch.eye(7, dtype=torch.float64).expand(shape[0], 7, 7))


def test_full_rank_gives_the_matrix_back_in_float32():
    matrices = torch.randn(2, 40, 90, generator=torch.Generator().manual_seed(1))
    u, s, vh = truncated_svd(matrices, 40)
    assert float(((u * s[:, None, :]) @ vh - matrices).norm() / matrices.norm()) < 1e-5
