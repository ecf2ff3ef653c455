"""`tunelab lora resize`: SVD to a new rank, same effective scale, fixed or spectrum-chosen ranks."""

from __future__ import annotations

import pytest
import torch

from helpers import run_cli
from lora_tool_helpers import mixed_keys, random_lora, relative_error
from tunelab.errors import TunelabError
from tunelab.formats.lora_io import read_lora_file, write_lora
from tunelab.formats.lora_set import LoraModule
from tunelab.lora.resizing import Dynamic, resize_lora
from tunelab.models.presets import build_preset


@pytest.fixture(scope="module")
def rank6_lora():
    return random_lora(build_preset("tiny-sd"), mixed_keys(build_preset("tiny-sd")), rank=6, alpha=3.0, seed=5)


def test_resize_to_the_same_rank_is_the_identity(rank6_lora):
    resized, report = resize_lora(rank6_lora, rank=6)
    for key, module in rank6_lora.items():
        assert resized[key].rank == 6 and resized[key].alpha == 3.0
        assert relative_error(resized[key].delta(), module.delta()) < 1e-5, key
    assert all(row.frobenius_kept == pytest.approx(1.0) for row in report)


def test_lower_rank_keeps_the_scale_and_the_top_of_the_spectrum(rank6_lora, tmp_path, capsys):
    source = write_lora(rank6_lora, tmp_path / "r6.safetensors", "kohya", {"ss_base_model_version": "sd_v1", "ss_training_comment": "kept"})
    out = tmp_path / "r2.safetensors"
    assert run_cli("lora", "resize", source, "--rank", "2", "--out", out) == 0
    printed = capsys.readouterr().out

    resized = read_lora_file(out)
    assert resized.metadata["ss_training_comment"] == "kept" and resized.metadata["ss_network_dim"] == "2"
    for key, module in rank6_lora.items():
        got = resized.lora[key]
        assert got.rank == 2
        assert got.alpha == pytest.approx(3.0 / 6 * 2)  # alpha / rank unchanged
        delta = module.delta().flatten(1)
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        best = (u[:, :2] * s[:2]) @ vh[:2]  # the best rank-2 approximation
        assert relative_error(got.delta().flatten(1), best) < 1e-4, key
        kept = float(s[:2].norm() / s.norm())
        assert f"{key}  rank 6 -> 2  keeps {kept:.2%} (Frobenius)" in printed


def lora_with_spectrum(values) -> dict[str, LoraModule]:
    """One module whose up @ down has exactly these singular values."""
    rank = len(values)
    generator = torch.Generator().manual_seed(0)
    left, _ = torch.linalg.qr(torch.randn(20, rank, generator=generator))  # (20, r), orthonormal columns
    right, _ = torch.linalg.qr(torch.randn(30, rank, generator=generator))  # (30, r)
    return {"unet.m": LoraModule(right.T.contiguous(), left * torch.tensor(values), float(rank))}


@pytest.mark.parametrize(
    "spec,cap,expected",
    [
        ("sv_ratio=3", None, 2),  # keep 8 and 4: at least 8 / 3
        ("sv_ratio=100", None, 4),
        ("sv_fro=0.95", None, 2),  # sqrt(80 / 85) = 0.970 reaches 0.95; sqrt(64 / 85) = 0.868 does not
        ("sv_cumulative=0.9", None, 3),  # 14 / 15 = 0.933 reaches 0.9; 12 / 15 = 0.8 does not
        ("sv_fro=1", None, 4),
        ("sv_cumulative=0.9", 1, 1),  # --rank caps the dynamic choice
    ],
)
def test_dynamic_methods_choose_the_rank_from_the_spectrum(spec, cap, expected):
    lora = lora_with_spectrum([8.0, 4.0, 2.0, 1.0])
    resized, report = resize_lora(lora, rank=cap, dynamic=Dynamic.parse(spec))
    assert resized["unet.m"].rank == expected
    assert resized["unet.m"].alpha == pytest.approx(expected)  # old alpha / old rank = 1
    kept = (torch.tensor([64.0, 16.0, 4.0, 1.0])[:expected].sum() / 85).sqrt()
    assert report[0].frobenius_kept == pytest.approx(float(kept), rel=1e-5)


def test_bad_resize_requests_are_clear_errors(tmp_path, capsys):
    with pytest.raises(TunelabError, match="METHOD=VALUE"):
        Dynamic.parse("sv_magic=0.5")
    with pytest.raises(TunelabError, match="fraction in"):
        Dynamic.parse("sv_fro=1.5")
    with pytest.raises(TunelabError, match="give --rank, --dynamic"):
        resize_lora(lora_with_spectrum([1.0]))
    source = write_lora(lora_with_spectrum([2.0, 1.0]), tmp_path / "in.safetensors", "peft", {})
    assert run_cli("lora", "resize", source, "--rank", "1", "--out", tmp_path / "out.ckpt") == 2
    assert "written as .safetensors" in capsys.readouterr().err
