"""LoRA end to end on tiny-sd: what trains, what is saved, and that diffusers reads it as we meant."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run_cli
from tunelab.methods.lora import LoraMethod, LoraOptions
from tunelab.models.presets import build_preset
from tunelab.training.loop import train
from tunelab.training.options import TrainOptions

PROMPT = "a photo of sks toy"


def train_lora(out, images, steps=8, **lora_overrides):
    options = TrainOptions(
        model="tiny-sd", images=str(images), out=str(out), prompt=PROMPT, steps=steps,
        learning_rate=5e-3, log_with="none",
    )
    method = LoraMethod(replace(LoraOptions(), **lora_overrides))
    artifact = train(options, method, {"technique": "lora"})
    return method, artifact


def unet_output(unet, text_encoder, tokenizer):
    """The denoiser's prediction on a fixed input: compares two models exactly."""
    generator = torch.Generator().manual_seed(123)
    latents = torch.randn((1, 4, 16, 16), generator=generator)  # (B, C, h, w)
    ids = tokenizer([PROMPT], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = text_encoder(ids)[0]  # (1, 77, 32)
        return unet(latents, torch.tensor([500]), encoder_hidden_states=hidden).sample


def test_only_lora_parameters_change(tmp_path, subject_images):
    method, _ = train_lora(tmp_path, subject_images)
    trained = method.family.pipeline
    fresh = build_preset("tiny-sd")
    for component in ("unet", "text_encoder", "vae"):
        base_state = getattr(fresh, component).state_dict()
        changed_lora = 0
        for name, value in getattr(trained, component).state_dict().items():
            if ".lora_" in name:
                changed_lora += int("lora_B" in name and value.abs().sum() > 0)  # B starts at zero
                continue
            plain_name = name.replace(".base_layer", "")
            assert torch.equal(value, base_state[plain_name]), f"{component}.{name} changed"
        if component == "unet":
            assert changed_lora > 0, "no LoRA weight was trained"


def test_saved_file_is_kohya_and_diffusers_reproduces_the_trained_model(tmp_path, subject_images):
    method, artifact = train_lora(tmp_path, subject_images, train_text_encoder=True)
    from safetensors import safe_open

    with safe_open(artifact, "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert any(k.startswith("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down") for k in keys)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up") for k in keys)
    assert any(k.endswith(".alpha") for k in keys)
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "4.0"
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert '"technique": "lora"' in metadata["tunelab_config"]

    trained = method.family.pipeline
    expected = unet_output(trained.unet, trained.text_encoder, trained.tokenizer)

    loaded = build_preset("tiny-sd")
    before = unet_output(loaded.unet, loaded.text_encoder, loaded.tokenizer)
    loaded.load_lora_weights(str(artifact))
    got = unet_output(loaded.unet, loaded.text_encoder, loaded.tokenizer)
    assert not torch.allclose(before, expected, atol=1e-4), "training changed nothing"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_peft_format_loads_in_diffusers_like_kohya(tmp_path, subject_images):
    method, kohya_file = train_lora(tmp_path / "k", subject_images, targets=["attention", "feedforward", "conv"])
    peft_file = method.save(tmp_path / "p", {})  # same weights, other layout
    method.options.format = "peft"
    peft_file = method.save(tmp_path / "p", {})
    from safetensors.torch import load_file

    assert any(k.startswith("unet.") and ".lora_A." in k for k in load_file(peft_file))
    outputs = []
    for path in (kohya_file, peft_file):
        pipeline = build_preset("tiny-sd")
        pipeline.load_lora_weights(str(path))
        outputs.append(unet_output(pipeline.unet, pipeline.text_encoder, pipeline.tokenizer))
    trained = method.family.pipeline
    expected = unet_output(trained.unet, trained.text_encoder, trained.tokenizer)
    torch.testing.assert_close(outputs[0], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outputs[1], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("precision,tolerance", [("fp32", 0.0), ("fp16", 1e-3), ("bf16", 1e-2)])
def test_save_and_read_round_trip(tmp_path, subject_images, precision, tolerance):
    from tunelab.formats.lora_io import read_lora

    method, _ = train_lora(tmp_path, subject_images, steps=3, targets=["attention", "conv"])
    method.options.save_precision = precision
    path = method.save(tmp_path / precision, {})
    module_keys = [f"unet.{name}" for name, _ in method.family.pipeline.unet.named_modules()]
    read, metadata = read_lora(path, module_keys)
    original = method.lora_set()
    assert set(read) == set(original) and len(read) > 0
    for key, module in original.items():
        assert read[key].down.dtype == {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        assert read[key].alpha == module.alpha
        if tolerance == 0.0:
            assert torch.equal(read[key].down, module.down) and torch.equal(read[key].up, module.up)
        else:
            torch.testing.assert_close(read[key].delta(), module.delta(), atol=tolerance, rtol=tolerance * 10)


def _pixels(path):
    return np.asarray(Image.open(path)).astype(np.int16)


def test_generate_with_lora_matches_diffusers_and_weight_zero_is_base(tmp_path, trained_lora):
    from diffusers import DPMSolverMultistepScheduler

    common = ["generate", "--model", "tiny-sd", "--prompt", PROMPT, "--steps", "8", "--seed", "7",
              "--sampler", "dpm++_2m_sde_karras", "--guidance", "5"]
    assert run_cli(*common, "--out", tmp_path / "lora.png", "--lora", f"{trained_lora}:1.0") == 0
    assert run_cli(*common, "--out", tmp_path / "zero.png", "--lora", f"{trained_lora}:0") == 0
    assert run_cli(*common, "--out", tmp_path / "base.png") == 0

    pipeline = build_preset("tiny-sd")
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(
        pipeline.scheduler.config, algorithm_type="sde-dpmsolver++", use_karras_sigmas=True
    )
    pipeline.load_lora_weights(str(trained_lora))
    reference = pipeline(PROMPT, num_inference_steps=8, guidance_scale=5, generator=torch.Generator().manual_seed(7)).images[0]

    assert np.array_equal(_pixels(tmp_path / "lora.png"), np.asarray(reference).astype(np.int16))
    assert np.array_equal(_pixels(tmp_path / "zero.png"), _pixels(tmp_path / "base.png"))
    assert np.abs(_pixels(tmp_path / "lora.png") - _pixels(tmp_path / "base.png")).max() > 0


def test_bad_lora_options_are_clear_errors(tmp_path, subject_images, capsys):
    code = run_cli("train", "lora", "--model", "tiny-sd", "--images", subject_images, "--out", tmp_path,
                   "--prompt", PROMPT, "--rank", "0")
    assert code == 2
    assert "--rank must be at least 1" in capsys.readouterr().err
    code = run_cli("train", "lora", "--model", "tiny-sd", "--images", subject_images, "--out", tmp_path,
                   "--prompt", PROMPT, "--targets", "attention", "mlp")
    assert code == 2
    assert "'mlp' is not one of attention, feedforward, conv" in capsys.readouterr().err


def test_a_rank_larger_than_a_layer_can_use_is_refused(tmp_path, subject_images, capsys):
    """Issue 16: kohya lets it pass (a file many times larger, no capacity gained); tunelab refuses, naming the layer."""
    code = run_cli("train", "lora", "--model", "tiny-sd", "--images", subject_images, "--out", tmp_path / "big",
                   "--prompt", PROMPT, "--rank", "500", "--steps", "1", "--log-with", "none")
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--rank 500 is larger than layer" in err and "(16, 16): at most 16); a higher rank adds file size" in err
