"""`tunelab lora extract`: SVD of weight differences, on tiny models whose true difference is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from helpers import run_cli
from lora_tool_helpers import PROMPT, add_full_rank_noise, add_low_rank_changes, denoiser_output, relative_error
from tunelab.errors import TunelabError
from tunelab.formats.lora_io import read_lora_file
from tunelab.lora.extraction import ExtractSettings, extract_lora
from tunelab.lora.modules import adaptable_modules, is_spatial_conv, module_weights
from tunelab.models.presets import build_preset


def weights_of(pipeline):
    return module_weights(adaptable_modules(pipeline))


@pytest.mark.parametrize("alpha", [None, 2.0])
@pytest.mark.parametrize("clamp_mode", ["absolute", "kohya"])
def test_rank_r_difference_is_recovered_exactly_at_rank_at_least_r_with_the_default_clamp(alpha, clamp_mode):
    base, tuned = build_preset("tiny-sd"), build_preset("tiny-sd")
    changes = add_low_rank_changes(tuned, rank=2)
    settings = ExtractSettings(rank=4, conv_rank=3, alpha=alpha, clamp_mode=clamp_mode)  # clamp quantile 0.99

    extraction = extract_lora(weights_of(base), weights_of(tuned), settings, progress=False)

    assert set(extraction.lora) == set(changes)  # linear, 1x1 and 3x3 convs, UNet and text encoder
    for key, change in changes.items():
        module = extraction.lora[key]
        # fp32 rounding only: the rank holds the change, so the clamp (which would clip 1-2% of the
        # factors' values, about 1e-2 of the delta here) is not applied.
        assert relative_error(module.delta(), change) < 2e-6, key
        assert module.rank == (3 if is_spatial_conv(change.shape) else 4)
        assert module.alpha == (alpha or 4.0)  # alpha defaults to --rank, for every module
    assert f"{len(changes)} modules the rank holds exactly are not clamped" in extraction.notes[-1]


def test_a_rank_that_drops_part_of_the_difference_is_clamped():
    base, tuned = build_preset("tiny-sd"), build_preset("tiny-sd")
    changes = add_low_rank_changes(tuned, rank=2)
    extraction = extract_lora(weights_of(base), weights_of(tuned), ExtractSettings(rank=1, conv_rank=1), progress=False)
    unclamped = extract_lora(weights_of(base), weights_of(tuned), ExtractSettings(rank=1, conv_rank=1, clamp_quantile=1.0), progress=False)
    assert extraction.notes[-1].startswith(f"clamp: factors limited to the 0.99 quantile of their absolute values in {len(changes)} modules")
    for key, module in extraction.lora.items():
        other = unclamped.lora[key]
        assert not (torch.equal(module.up, other.up) and torch.equal(module.down, other.down)), key


def test_cli_writes_a_kohya_file_that_holds_the_difference(tmp_path, tiny_sd_folder, low_rank_tuned, capsys):
    tuned_folder, changes = low_rank_tuned
    out = tmp_path / "extracted.safetensors"
    code = run_cli("lora", "extract", "--base", tiny_sd_folder, "--tuned", tuned_folder, "--rank", "2",
                   "--conv-rank", "2", "--out", out)  # default clamp: not applied where the rank holds the change
    assert code == 0
    printed = capsys.readouterr().out
    assert "text encoder differs" in printed and f"wrote {out}" in printed
    assert f"{len(changes)} modules the rank holds exactly are not clamped" in printed

    with safe_open(out, "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert "lora_unet_down_blocks_1_resnets_0_conv1.lora_down.weight" in keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in keys
    assert metadata["ss_network_dim"] == "2" and metadata["ss_base_model_version"] == "sd_v1"
    record = json.loads(metadata["tunelab_extract"])
    assert (record["clamp_quantile"], record["clamp_mode"], record["modules"]) == (0.99, "absolute", "all")
    lora = read_lora_file(out).lora
    assert set(lora) == set(changes)
    assert max(relative_error(lora[key].delta(), change) for key, change in changes.items()) < 1e-4


@pytest.mark.parametrize("file_format", ["kohya", "peft"])
def test_full_rank_extraction_reproduces_the_tuned_model_in_diffusers(tmp_path, file_format):
    tuned = build_preset("tiny-sd")
    add_full_rank_noise(tuned)  # every Linear and Conv2d, conv_in and time embedding included
    tuned_folder = tmp_path / "tuned"
    tuned.save_pretrained(tuned_folder)
    out = tmp_path / "full.safetensors"
    code = run_cli("lora", "extract", "--base", "tiny-sd", "--tuned", tuned_folder, "--rank", "10000",
                   "--conv-rank", "10000", "--format", file_format, "--out", out)  # full rank: held exactly, never clamped
    assert code == 0

    loaded = build_preset("tiny-sd")
    loaded.load_lora_weights(str(out))  # diffusers' own loader, as users load LoRAs
    base_difference = (denoiser_output(build_preset("tiny-sd")) - denoiser_output(tuned)).abs().max()
    assert base_difference > 0.1
    torch.testing.assert_close(denoiser_output(loaded), denoiser_output(tuned), atol=1e-4, rtol=1e-4)

    def image(pipeline):
        return np.asarray(pipeline(PROMPT, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images[0], dtype=np.int16)

    for pipeline in (loaded, tuned):
        pipeline.set_progress_bar_config(disable=True)
    assert np.abs(image(loaded) - image(tuned)).max() <= 1


def test_rank_above_what_a_module_allows_is_clamped_per_module_with_one_note(tiny_sd_folder, low_rank_tuned, tmp_path, capsys):
    tuned_folder, _ = low_rank_tuned
    out = tmp_path / "big.safetensors"
    assert run_cli("lora", "extract", "--base", tiny_sd_folder, "--tuned", tuned_folder, "--rank", "48", "--out", out) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "allow less than the requested rank" in line]
    assert len(notes) == 1

    shapes = {key: module.weight.shape for key, module in adaptable_modules(build_preset("tiny-sd")).items()}
    lora = read_lora_file(out).lora
    clamped = [key for key, module in lora.items() if module.rank < 48]
    assert notes[0].startswith(f"{len(clamped)} modules")
    for key, module in lora.items():
        assert module.rank == min(48, shapes[key][0], shapes[key][1:].numel()), key
    assert not any(is_spatial_conv(shapes[key]) for key in lora)  # no --conv-rank: 3x3 convs left out


def test_text_encoder_under_min_diff_is_left_out_and_unchanged_modules_too():
    base, tuned = build_preset("tiny-sd"), build_preset("tiny-sd")
    attention = {key for key in adaptable_modules(base) if key.startswith("unet.") and ".attn1." in key}
    add_low_rank_changes(tuned, rank=1, keys=attention)
    text = {key for key in adaptable_modules(base) if key.startswith("text_encoder.")}
    add_low_rank_changes(tuned, rank=1, scale=1e-3, keys=text)  # largest change well below 0.01

    kept = extract_lora(weights_of(base), weights_of(tuned), ExtractSettings(rank=2), progress=False)
    assert set(kept.lora) == attention
    assert any(note.startswith("text encoder: largest weight difference") for note in kept.notes)
    assert any("identical in both models" in note for note in kept.notes)

    lower = extract_lora(weights_of(base), weights_of(tuned), ExtractSettings(rank=2, min_diff=1e-5), progress=False)
    assert set(lower.lora) == attention | text


@pytest.mark.parametrize("clamp_mode", ["absolute", "kohya"])
def test_clamp_mode_bounds_both_factors_of_every_module_by_its_rule(clamp_mode):
    base, tuned = build_preset("tiny-sd"), build_preset("tiny-sd")
    add_full_rank_noise(tuned)
    unclamped = extract_lora(weights_of(base), weights_of(tuned), ExtractSettings(rank=4, clamp_quantile=1.0), progress=False)
    settings = ExtractSettings(rank=4, clamp_quantile=0.9, clamp_mode=clamp_mode)
    clamped = extract_lora(weights_of(base), weights_of(tuned), settings, progress=False)
    for key, module in unclamped.lora.items():
        pooled = torch.cat([module.up.flatten(), module.down.flatten()])  # alpha = rank: up is U·S as it was clamped
        limit = torch.quantile(pooled.abs() if clamp_mode == "absolute" else pooled, 0.9)
        got = clamped.lora[key]
        torch.testing.assert_close(got.up, module.up.clamp(-limit, limit))
        torch.testing.assert_close(got.down, module.down.clamp(-limit, limit))


def test_models_of_different_architectures_are_refused(tmp_path, tiny_sd_folder, capsys):
    from diffusers import UNet2DConditionModel

    other = build_preset("tiny-sd")
    other.unet = UNet2DConditionModel(**{**dict(other.unet.config), "block_out_channels": (16, 48)})
    other.save_pretrained(tmp_path / "other")
    code = run_cli("lora", "extract", "--base", tiny_sd_folder, "--tuned", tmp_path / "other", "--rank", "4",
                   "--out", tmp_path / "x.safetensors")
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # lines before it: diffusers' loading bars
    assert error.startswith("tunelab: error: the base and tuned models have different architectures")
    assert "33 modules differ in shape, e.g. unet.down_blocks.1.resnets.0.conv1 (32, 16, 3, 3) vs (48, 16, 3, 3)" in error
    assert not (tmp_path / "x.safetensors").exists()


def test_identical_models_and_bad_settings_are_clear_errors():
    base = build_preset("tiny-sd")
    with pytest.raises(TunelabError, match="do not differ"):
        extract_lora(weights_of(base), weights_of(build_preset("tiny-sd")), ExtractSettings(rank=4), progress=False)
    with pytest.raises(TunelabError, match="clamp-quantile"):
        extract_lora(weights_of(base), weights_of(base), ExtractSettings(rank=4, clamp_quantile=0.0), progress=False)


def test_changes_a_lora_cannot_hold_are_reported(tmp_path, capsys):
    tuned = build_preset("tiny-sd")
    add_low_rank_changes(tuned, rank=1, keys={"unet.conv_in"})
    with torch.no_grad():
        tuned.unet.conv_in.bias += 0.25  # a bias: no LoRA carries it
        tuned.text_encoder.final_layer_norm.weight += 0.5
    tuned.save_pretrained(tmp_path / "tuned")
    out = tmp_path / "lora.safetensors"
    assert run_cli("lora", "extract", "--base", "tiny-sd", "--tuned", tmp_path / "tuned", "--rank", "1", "--conv-rank", "1", "--out", out) == 0
    printed = capsys.readouterr().out
    assert "unet: tensors a LoRA cannot hold (biases, norms, embeddings) differ too and are left out: 1, by at most 0.25" in printed
    assert "text_encoder: tensors a LoRA cannot hold (biases, norms, embeddings) differ too and are left out: 1, by at most 0.5" in printed
    assert set(read_lora_file(out).lora) == {"unet.conv_in"}
