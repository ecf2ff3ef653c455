"""`lora extract --clamp-mode kohya --modules kohya` writes the file kohya's rule gives, on a tiny SD 1.5-layout pair.

The expectation is built here from the documented behaviour of sd-scripts'
networks/extract_lora_from_models.py (with networks/lora.py's module choice), not from its code:

- modules: every Linear and Conv2d inside the UNet's Transformer2DModel blocks and the text
  encoder's CLIPAttention and CLIPMLP blocks; with a conv rank, also inside ResnetBlock2D,
  Downsample2D and Upsample2D, their 3x3 convs at the conv rank and the rest at the rank;
- names: `lora_unet_<path>` and `lora_te_text_model_<path>` with dots as underscores, each with
  `.lora_down.weight`, `.lora_up.weight` and `.alpha`;
- factors: the exact SVD of the difference (3x3 kernels flattened), its top r triplets,
  up = U·S and down = Vh; the 0.99 quantile of the signed values of up and down taken
  together is the limit, and both are clamped to [-limit, limit].

An SVD fixes each singular pair only up to sign and kohya's rule reads signs, so the reference
takes tunelab's documented convention (the largest-magnitude entry of each Vh row positive).
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from helpers import run_cli
from lora_tool_helpers import add_full_rank_noise, relative_error
from tunelab.formats.lora_io import read_lora_file
from tunelab.lora.modules import adaptable_modules
from tunelab.models.presets import build_preset

KOHYA_UNET_BLOCKS = {"Transformer2DModel"}
KOHYA_UNET_CONV_BLOCKS = {"ResnetBlock2D", "Downsample2D", "Upsample2D"}
KOHYA_TEXT_BLOCKS = {"CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"}
RANK, CONV_RANK, QUANTILE = 4, 3, 0.99


def kohya_modules(pipeline, with_convs: bool) -> dict[str, str]:
    """kohya's key stem -> tunelab module key, by walking the models for kohya's block classes."""
    chosen = {}
    unet_blocks = KOHYA_UNET_BLOCKS | KOHYA_UNET_CONV_BLOCKS if with_convs else KOHYA_UNET_BLOCKS
    for component, root, blocks in (("unet", pipeline.unet, unet_blocks), ("text_encoder", pipeline.text_encoder, KOHYA_TEXT_BLOCKS)):
        for name, block in root.named_modules():
            if type(block).__name__ not in blocks:
                continue
            for child_name, child in block.named_modules():
                if isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)):
                    path = f"{name}.{child_name}"
                    # kohya's CLIP (transformers 4) has a text_model level that transformers 5 dropped.
                    kohya_path = path if component == "unet" or path.startswith("text_model.") else f"text_model.{path}"
                    prefix = "lora_unet" if component == "unet" else "lora_te"
                    chosen[f"{prefix}_{kohya_path}".replace(".", "_")] = f"{component}.{path}"
    return chosen


def rule_delta(difference: torch.Tensor, rank: int, mode: str) -> torch.Tensor:
    """The delta a clamp rule gives: kohya's (signed pooled quantile) or the absolute one."""
    matrix = difference.double().flatten(1)  # (out, in*kh*kw)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    rank = min(rank, difference.shape[0], difference.shape[1])  # kohya caps by out and in channels
    up, down = u[:, :rank] * s[:rank], vh[:rank]  # (out, r), (r, in*kh*kw)
    signs = torch.where(down.gather(1, down.abs().argmax(1, keepdim=True)) < 0, -1.0, 1.0).double()  # (r, 1)
    up, down = up * signs.T, down * signs
    pooled = torch.cat([up.flatten(), down.flatten()])
    limit = torch.quantile(pooled if mode == "kohya" else pooled.abs(), QUANTILE)
    return (up.clamp(-limit, limit) @ down.clamp(-limit, limit)).reshape(difference.shape)


@pytest.fixture(scope="module")
def noisy_pair(tmp_path_factory):
    """tiny-sd and a copy whose every Linear and Conv2d weight moved by full-rank noise, saved."""
    base, tuned = build_preset("tiny-sd"), build_preset("tiny-sd")
    add_full_rank_noise(tuned)
    folder = tmp_path_factory.mktemp("kohya-pair")
    base.save_pretrained(folder / "base")
    tuned.save_pretrained(folder / "tuned")
    return folder, base, tuned


@pytest.mark.parametrize("conv_rank", [None, CONV_RANK])
def test_kohya_mode_gives_kohyas_keys_and_each_modules_delta(noisy_pair, tmp_path, conv_rank, capsys):
    folder, base, tuned = noisy_pair
    out = tmp_path / "kohya.safetensors"
    conv = ["--conv-rank", str(conv_rank)] if conv_rank else []
    code = run_cli("lora", "extract", "--base", folder / "base", "--tuned", folder / "tuned", "--rank", str(RANK), *conv,
                   "--clamp-mode", "kohya", "--modules", "kohya", "--out", out)
    assert code == 0
    assert "quantile of their signed values (kohya's rule)" in capsys.readouterr().out

    expected = kohya_modules(base, with_convs=conv_rank is not None)
    with safe_open(out, "pt") as handle:
        keys = set(handle.keys())
    assert keys == {f"{stem}.{part}" for stem in expected for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    everything = adaptable_modules(base)
    assert len(expected) < len(everything)  # kohya's set leaves modules out (time embedding, conv_in, ...)

    lora = read_lora_file(out).lora
    base_weights, tuned_weights = adaptable_modules(base), adaptable_modules(tuned)
    distinct = 0
    for key in expected.values():
        difference = (tuned_weights[key].weight - base_weights[key].weight).detach()
        rank = conv_rank if difference.dim() == 4 and difference.shape[2:] != (1, 1) else RANK
        reference = rule_delta(difference, rank, "kohya")
        assert relative_error(lora[key].delta(), reference) < 1e-4, key
        distinct += relative_error(rule_delta(difference, rank, "absolute"), reference) > 1e-3
    # The absolute rule would have failed the check above: on these small factors (128-384 values)
    # both rules often clip just the largest value, but in a third of the modules they part by >1e-3.
    assert distinct >= len(expected) // 4

    assert run_cli("lora", "info", out) == 0
    rank_text = f"conv rank {conv_rank}" if conv_rank else "conv rank none"
    assert f"extracted   clamp kohya at quantile 0.99; modules kohya; rank {RANK}, {rank_text}" in capsys.readouterr().out


def test_modules_kohya_is_refused_on_flux():
    from tunelab.errors import TunelabError
    from tunelab.lora.extraction import ExtractSettings, extract_lora

    weights = {"transformer.single_blocks.0.linear1": torch.zeros(4, 4), "text_encoder.encoder.layers.0.mlp.fc1": torch.zeros(4, 4)}
    tuned = {key: value + 1 for key, value in weights.items()}
    with pytest.raises(TunelabError, match="SD 1.x/2.x and SDXL models; this model has transformer: use --modules all"):
        extract_lora(weights, tuned, ExtractSettings(rank=2, modules="kohya"), progress=False)
