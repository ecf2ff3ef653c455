"""`tunelab lora convert` and the readers behind every tool: kohya, PEFT, LyCORIS LoCon; OFT, full and mixed modules refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from helpers import run_cli
from lora_tool_helpers import denoiser_output, mixed_keys, random_lora
from tunelab.formats.kohya_lora import kohya_metadata
from tunelab.formats.lora_io import read_lora_file, write_lora
from tunelab.formats.safetensors_io import save_tensors
from tunelab.models.presets import build_preset


@pytest.fixture(scope="module")
def kohya_file(tmp_path_factory):
    pipeline = build_preset("tiny-sd")
    lora = random_lora(pipeline, mixed_keys(pipeline), rank=4, alpha=2.0, seed=6)
    path = tmp_path_factory.mktemp("convert") / "kohya.safetensors"
    return write_lora(lora, path, "kohya", kohya_metadata(lora, "sd_v1", {"ss_output_name": "toy"}))


def test_kohya_to_peft_to_kohya_is_lossless_in_fp32(kohya_file, tmp_path):
    peft, back = tmp_path / "peft.safetensors", tmp_path / "back.safetensors"
    assert run_cli("lora", "convert", kohya_file, "--to", "peft", "--out", peft) == 0
    assert run_cli("lora", "convert", peft, "--to", "kohya", "--out", back) == 0

    assert any(key.startswith("text_encoder.text_model.encoder.") and ".lora_A." in key for key in load_file(peft))
    original, round_trip = load_file(kohya_file), load_file(back)
    assert set(round_trip) == set(original)
    for key, tensor in original.items():
        assert torch.equal(round_trip[key], tensor), key
    metadata = read_lora_file(back).metadata
    assert metadata["ss_output_name"] == "toy" and metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "2.0"


def test_both_layouts_give_diffusers_the_same_model(kohya_file, tmp_path):
    peft = tmp_path / "peft.safetensors"
    assert run_cli("lora", "convert", kohya_file, "--to", "peft", "--out", peft) == 0
    outputs = []
    for path in (kohya_file, peft):
        pipeline = build_preset("tiny-sd")
        pipeline.load_lora_weights(str(path))
        outputs.append(denoiser_output(pipeline))
    assert (outputs[0] - denoiser_output(build_preset("tiny-sd"))).abs().max() > 1e-2
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-6, rtol=1e-5)


def test_precision_changes_only_the_dtype(kohya_file, tmp_path):
    half = tmp_path / "half.safetensors"
    assert run_cli("lora", "convert", kohya_file, "--to", "kohya", "--precision", "fp16", "--out", half) == 0
    original, converted = load_file(kohya_file), load_file(half)
    assert {tensor.dtype for tensor in converted.values()} == {torch.float16}
    for key, tensor in original.items():
        assert torch.equal(converted[key], tensor.half()), key


def test_lycoris_locon_with_a_tucker_core_reads_as_the_same_convolution(tmp_path):
    generator = torch.Generator().manual_seed(0)
    name = "lora_unet_down_blocks_1_resnets_0_conv1"  # tiny-sd: 16 -> 32 channels, 3x3
    down = torch.randn(4, 16, 1, 1, generator=generator)
    mid = torch.randn(4, 4, 3, 3, generator=generator)
    up = torch.randn(32, 4, 1, 1, generator=generator)
    linear = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v"
    tensors = {
        f"{name}.lora_down.weight": down, f"{name}.lora_mid.weight": mid, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(2.0),
        f"{linear}.lora_down.weight": torch.randn(2, 32, generator=generator), f"{linear}.lora_up.weight": torch.randn(16, 2, generator=generator),
    }
    path = save_tensors(tensors, tmp_path / "locon.safetensors", {"ss_network_module": "lycoris.kohya"})

    lora = read_lora_file(path).lora
    module = lora["unet.down_blocks.1.resnets.0.conv1"]
    image = torch.randn(1, 16, 8, 8, generator=generator)  # (B, C_in, H, W)
    # LyCORIS's own forward: 1x1 down, kxk core, 1x1 up, times alpha / rank.
    lycoris = F.conv2d(F.conv2d(F.conv2d(image, down), mid, padding=1), up) * (2.0 / 4)
    torch.testing.assert_close(F.conv2d(image, module.delta(), padding=1), lycoris, atol=1e-4, rtol=1e-4)
    assert lora["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"].alpha == 2.0  # no alpha: rank

    out = tmp_path / "as-peft.safetensors"
    assert run_cli("lora", "convert", path, "--to", "peft", "--out", out) == 0
    torch.testing.assert_close(read_lora_file(out).lora["unet.down_blocks.1.resnets.0.conv1"].delta(), module.delta())


@pytest.mark.parametrize(
    "parts,message",
    [
        (("oft_blocks", "alpha"), "is a OFT file"),
        (("diff",), "is a full weight difference"),
        (("lora_down.weight", "lora_up.weight", "hada_w1_a"), "mixes LoRA (lora_down.weight) and LoHa (hada_w1_a) weights"),
        (("lora_down.weight", "lora_up.weight", "bias_indices"), "unrecognised keys in this kohya LoRA file"),
    ],
)
def test_other_lycoris_algorithms_and_unknown_keys_are_refused(tmp_path, capsys, parts, message):
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    path = save_tensors({f"{name}.{part}": torch.ones(2, 2) for part in parts}, tmp_path / "other.safetensors")
    assert run_cli("lora", "convert", path, "--to", "peft", "--out", tmp_path / "out.safetensors") == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out.safetensors").exists()


def test_original_block_names_are_read_as_sdxl_modules(tmp_path, capsys):
    from tunelab.formats.lora_io import read_lora

    name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    path = save_tensors({f"{name}.lora_down.weight": torch.ones(2, 8), f"{name}.lora_up.weight": torch.ones(8, 2)}, tmp_path / "sgm.safetensors")
    assert list(read_lora(path)[0]) == ["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert run_cli("lora", "info", path) == 0
    assert "unet 1" in capsys.readouterr().out
