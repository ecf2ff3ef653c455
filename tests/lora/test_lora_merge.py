"""`tunelab lora merge`: LoRA deltas baked into a checkpoint that tunelab and diffusers load."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from helpers import run_cli
from lora_tool_helpers import denoiser_output, mixed_keys, random_lora, relative_error
from tunelab.formats.kohya_lora import kohya_metadata
from tunelab.formats.lora_io import write_lora
from tunelab.formats.safetensors_io import save_tensors
from tunelab.lora.extraction import ExtractSettings, extract_lora
from tunelab.lora.modules import adaptable_modules, module_weights
from tunelab.models.loading import load_pipeline
from tunelab.models.presets import build_preset


@pytest.fixture(scope="module")
def two_loras(tmp_path_factory):
    """A kohya and a PEFT file on overlapping tiny-sd modules (attention, ff, 1x1 and 3x3 conv, text encoder)."""
    folder = tmp_path_factory.mktemp("loras")
    pipeline = build_preset("tiny-sd")
    keys = mixed_keys(pipeline)
    first = random_lora(pipeline, keys, rank=4, alpha=2.0, seed=1)
    second = random_lora(pipeline, keys[2:], rank=3, alpha=3.0, seed=2)
    kohya = write_lora(first, folder / "first.safetensors", "kohya", kohya_metadata(first, "sd_v1"))
    peft = write_lora(second, folder / "second.safetensors", "peft", {})
    return (kohya, first), (peft, second)


def expected_weights(loras_and_weights):
    base = adaptable_modules(build_preset("tiny-sd"))
    expected = {key: module.weight.detach().clone() for key, module in base.items()}
    for lora, weight in loras_and_weights:
        for key, module in lora.items():
            expected[key] += weight * module.delta().reshape(expected[key].shape)
    return expected


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # diffusers, on its second adapter
def test_merge_bakes_the_weighted_deltas_and_loads_with_load_pipeline(tmp_path, two_loras):
    (kohya, first), (peft, second) = two_loras
    out = tmp_path / "merged"
    assert run_cli("lora", "merge", "--model", "tiny-sd", "--lora", f"{kohya}:0.7", "--lora", f"{peft}:-0.5", "--out", out) == 0

    merged = load_pipeline(out)
    expected = expected_weights([(first, 0.7), (second, -0.5)])
    for key, module in adaptable_modules(merged).items():
        torch.testing.assert_close(module.weight, expected[key], atol=1e-6, rtol=1e-6, msg=key)

    # diffusers' own LoRA loader at the same weights gives the same model.
    reference = build_preset("tiny-sd")
    reference.load_lora_weights(str(kohya), adapter_name="first")
    reference.load_lora_weights(str(peft), adapter_name="second")
    reference.set_adapters(["first", "second"], adapter_weights=[0.7, -0.5])
    torch.testing.assert_close(denoiser_output(merged), denoiser_output(reference), atol=1e-5, rtol=1e-4)


def test_merge_to_a_single_file_in_fp16(tmp_path, tiny_sd_folder, two_loras):
    from tunelab.models.single_file import load_single_file

    (kohya, first), _ = two_loras
    out = tmp_path / "merged.safetensors"
    assert run_cli("lora", "merge", "--model", tiny_sd_folder, "--lora", kohya, "--out", out, "--precision", "fp16") == 0

    with safe_open(out, "pt") as handle:
        assert {handle.get_tensor(key).dtype for key in handle.keys()} == {torch.float16}
        assert "tunelab_merge" in handle.metadata()
    merged = load_single_file(out, config_dir=tiny_sd_folder)  # tiny-sd is no known single-file variant: give its config
    expected = expected_weights([(first, 1.0)])
    for key in first:
        weight = adaptable_modules(merged)[key].weight
        torch.testing.assert_close(weight, expected[key], atol=2e-3, rtol=2e-3, msg=key)


def test_merge_then_extract_recovers_the_lora_delta(tmp_path, two_loras):
    (kohya, first), _ = two_loras
    out = tmp_path / "merged"
    assert run_cli("lora", "merge", "--model", "tiny-sd", "--lora", f"{kohya}:0.8", "--out", out) == 0

    base, merged = build_preset("tiny-sd"), load_pipeline(out)
    settings = ExtractSettings(rank=4, conv_rank=4, clamp_quantile=1.0)
    extracted = extract_lora(module_weights(adaptable_modules(base)), module_weights(adaptable_modules(merged)), settings, progress=False)
    assert set(extracted.lora) == set(first)
    for key, module in first.items():
        assert relative_error(extracted.lora[key].delta(), 0.8 * module.delta()) < 1e-4, key


def one_error_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]  # lines before it: diffusers' loading bars


def test_lora_for_another_architecture_names_the_modules(tmp_path, capsys):
    from diffusers import UNet2DConditionModel

    wider = build_preset("tiny-sd")
    wider.unet = UNet2DConditionModel(**{**dict(wider.unet.config), "block_out_channels": (24, 32)})
    keys = ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "unet.down_blocks.0.resnets.0.conv1"]
    lora = random_lora(wider, keys, rank=2, alpha=2.0)
    for file_format in ("kohya", "peft"):
        path = write_lora(lora, tmp_path / f"{file_format}.safetensors", file_format, {})
        assert run_cli("lora", "merge", "--model", "tiny-sd", "--lora", path, "--out", tmp_path / "m") == 2
        error = one_error_line(capsys)
        assert "does not fit this model" in error and "2 with other shapes" in error
        assert "unet.down_blocks.0.resnets.0.conv1 (LoRA (24, 24, 3, 3), model (16, 16, 3, 3))" in error

    extra = {"unet.down_blocks.7.attentions.0.proj_in": random_lora(wider, keys[:1], rank=2, alpha=2.0)[keys[0]], **lora}
    write_lora(extra, tmp_path / "missing.safetensors", "kohya", {})
    assert run_cli("lora", "merge", "--model", "tiny-sd", "--lora", tmp_path / "missing.safetensors", "--out", tmp_path / "m") == 2
    error = one_error_line(capsys)
    assert "1 LoRA modules match nothing in this model: lora_unet_down_blocks_7_attentions_0_proj_in" in error


def test_files_that_are_not_loras_are_refused(tmp_path, capsys):
    save_tensors({"model.diffusion_model.conv.weight": torch.zeros(2, 2)}, tmp_path / "model.safetensors")
    assert run_cli("lora", "merge", "--model", "tiny-sd", "--lora", tmp_path / "model.safetensors", "--out", tmp_path / "m") == 2
    assert "not a LoRA file" in one_error_line(capsys)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert run_cli("lora", "info", tmp_path / "junk.safetensors") == 2
    assert "not a valid .safetensors file" in one_error_line(capsys)
    assert run_cli("lora", "merge", "--model", "tiny-sd", "--out", tmp_path / "m") == 2
    assert "give at least one --lora" in one_error_line(capsys)
