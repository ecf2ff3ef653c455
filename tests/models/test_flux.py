"""Flux.1 on `tiny-flux`: flow-matching noise, LoRA files diffusers reads as we meant (diffusers/PEFT
and kohya layouts), and the techniques Flux does not take refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from helpers import run_cli
from tunelab.formats.lora_set import LoraModule
from tunelab.models.family import family_for
from tunelab.models.flux import FlowMatchingOptions
from tunelab.models.presets import build_preset
from tunelab.training.options import TrainOptions

PROMPT = "a photo of sks toy"


def _pixels(image):
    return np.asarray(Image.open(image) if not isinstance(image, Image.Image) else image).astype(np.int16)


@pytest.fixture(scope="module")
def flux_run(tmp_path_factory, subject_images):
    """A 12-step LoRA on the transformer (attention and MLPs) and CLIP-L, saved in the diffusers/PEFT layout."""
    out = tmp_path_factory.mktemp("flux-lora")
    code = run_cli(
        "train", "lora", "--model", "tiny-flux", "--images", subject_images, "--prompt", PROMPT, "--out", out,
        "--steps", "12", "--learning-rate", "1e-2", "--rank", "4", "--targets", "attention", "feedforward",
        "--train-text-encoder", "--format", "peft", "--timestep-sampling", "flux_shift", "--log-with", "none",
    )
    assert code == 0
    return out


def test_lora_loads_in_diffusers_flux_pipeline_and_gives_the_image_tunelab_generates(tmp_path, flux_run):
    lora_file = flux_run / "lora.safetensors"
    with safe_open(lora_file, "pt") as handle:
        keys = set(handle.keys())
    assert "transformer.transformer_blocks.0.attn.add_k_proj.lora_A.weight" in keys
    assert "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight" in keys
    assert any(key.startswith("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A") for key in keys)
    assert not any(key.startswith("text_encoder_2.") for key in keys)  # T5 stays frozen

    common = ["generate", "--model", "tiny-flux", "--prompt", PROMPT, "--steps", "4", "--seed", "5", "--guidance", "3.5"]
    assert run_cli(*common, "--out", tmp_path / "lora.png", "--lora", lora_file) == 0
    assert run_cli(*common, "--out", tmp_path / "base.png") == 0

    pipeline = build_preset("tiny-flux")
    pipeline.load_lora_weights(str(lora_file))
    reference = pipeline(PROMPT, num_inference_steps=4, guidance_scale=3.5, max_sequence_length=64,
                         generator=torch.Generator().manual_seed(5)).images[0]
    assert reference.size == (32, 32)
    assert np.array_equal(_pixels(tmp_path / "lora.png"), _pixels(reference))
    assert np.abs(_pixels(tmp_path / "lora.png") - _pixels(tmp_path / "base.png")).max() > 0


def test_kohya_flux_layout_fuses_projections_and_reads_back_exactly(tmp_path, flux_run):
    from tunelab.formats.lora_io import read_lora

    peft_file = flux_run / "lora.safetensors"
    kohya_file = tmp_path / "kohya.safetensors"
    assert run_cli("lora", "convert", peft_file, "--to", "kohya", "--out", kohya_file) == 0
    with safe_open(kohya_file, "pt") as handle:
        names = {key.split(".")[0] for key in handle.keys()}
        single_qkv_mlp = handle.get_tensor("lora_unet_single_blocks_0_linear1.lora_up.weight")
    assert {"lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_0_txt_attn_qkv",
            "lora_unet_double_blocks_0_img_attn_proj", "lora_unet_double_blocks_0_txt_mlp_2",
            "lora_unet_single_blocks_0_linear1"} <= names
    assert single_qkv_mlp.shape == (3 * 32 + 4 * 32, 4 * 4)  # q, k, v, MLP rows; four rank-4 parts side by side
    assert any(name.startswith("lora_te1_text_model_encoder_layers_") for name in names)

    original, _ = read_lora(peft_file)
    fused, _ = read_lora(kohya_file)
    assert set(fused) == set(original)
    for key, module in original.items():
        assert fused[key].rank == module.rank  # block-diagonal parts come back at their own rank
        torch.testing.assert_close(fused[key].delta(), module.delta(), atol=1e-6, rtol=1e-5)

    common = ["generate", "--model", "tiny-flux", "--prompt", PROMPT, "--steps", "3", "--seed", "1"]
    assert run_cli(*common, "--out", tmp_path / "kohya.png", "--lora", kohya_file) == 0
    assert run_cli(*common, "--out", tmp_path / "peft.png", "--lora", peft_file) == 0
    assert np.abs(_pixels(tmp_path / "kohya.png") - _pixels(tmp_path / "peft.png")).max() <= 1


def test_kohya_flux_files_at_flux1_widths_read_in_diffusers_as_written():
    """diffusers' kohya Flux reader (which knows Flux.1's 3072 / 12288 widths) splits our fused modules
    back into the modules we wrote, with the same weight changes."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    from tunelab.formats.kohya_lora import to_kohya_tensors

    width, generator = 3072, torch.Generator().manual_seed(0)

    def module(out_features, in_features, rank=2, alpha=1.0):
        return LoraModule(torch.randn(rank, in_features, generator=generator) * 0.1,
                          torch.randn(out_features, rank, generator=generator) * 0.1, alpha)

    lora = {f"transformer.transformer_blocks.3.attn.{name}": module(width, width) for name in ("to_q", "to_k", "to_v", "add_v_proj")}
    lora |= {f"transformer.single_transformer_blocks.7.attn.{name}": module(width, width) for name in ("to_q", "to_k", "to_v")}
    lora["transformer.single_transformer_blocks.7.proj_mlp"] = module(4 * width, width, alpha=4.0)
    lora["transformer.single_transformer_blocks.7.proj_out"] = module(width, 5 * width)
    converted = _convert_kohya_flux_lora_to_diffusers(to_kohya_tensors(lora))
    for key, original in lora.items():
        down, up = converted[f"{key}.lora_A.weight"], converted[f"{key}.lora_B.weight"]  # alpha folded in by diffusers
        torch.testing.assert_close(up.float() @ down.float(), original.delta(), atol=1e-5, rtol=1e-4)


def test_flow_matching_noise_and_sigma_sampling():
    pipeline = build_preset("tiny-flux")
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    options = TrainOptions(model="tiny-flux", images="x", out="y")
    family = family_for(pipeline, options, FlowMatchingOptions(timestep_sampling="uniform"))
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    batch = family.add_noise(latents, 0.0, generators)
    noise = torch.stack([torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)])
    sigmas = batch.timesteps / 1000  # (B,)
    assert torch.all((sigmas > 0) & (sigmas < 1))
    s = sigmas[:, None, None, None]
    torch.testing.assert_close(batch.noisy, (1 - s) * latents + s * noise)
    torch.testing.assert_close(batch.target, noise - latents)

    draws = torch.randn(20000, generator=torch.Generator().manual_seed(1))
    many = torch.zeros(20000, 4, 16, 16)
    sigmoid = family_for(pipeline, options)
    assert torch.allclose(sigmoid.sample_sigmas(many, torch.Generator().manual_seed(1)), torch.sigmoid(draws))
    shifted = family_for(pipeline, options, FlowMatchingOptions(flow_shift=3.0))
    sigma = torch.sigmoid(draws)
    torch.testing.assert_close(shifted.sample_sigmas(many, torch.Generator().manual_seed(1)), 3 * sigma / (1 + 2 * sigma))
    assert shifted.sample_sigmas(many, torch.Generator().manual_seed(1)).mean() > 0.6  # shifted toward noise


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "hypernetwork"], "Hypernetwork is not supported on Flux.1 models (supported there: LoRA)"),
        (["train", "textual_inversion", "--token", "<sks>", "--init-word", "toy"], "Textual Inversion is not supported on Flux.1"),
        (["train", "dreambooth"], "DreamBooth (full fine-tuning) is not supported on Flux.1"),
        (["train", "lora", "--min-snr-gamma", "5"], "--min-snr-gamma weights DDPM timesteps"),
        (["train", "lora", "--model", "tiny-sd", "--flow-shift", "3"], "--flow-shift applies to flow-matching models"),
    ],
)
def test_combinations_that_make_no_sense_are_refused(tmp_path, subject_images, capsys, args, message):
    model = [] if "--model" in args else ["--model", "tiny-flux"]
    code = run_cli(*args, *model, "--images", subject_images, "--prompt", PROMPT, "--out", tmp_path, "--steps", "1",
                   "--log-with", "none")
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "lora.safetensors").exists()


def test_lora_merged_into_flux_gives_the_image_of_the_attached_lora(tmp_path, flux_run):
    lora_file = flux_run / "lora.safetensors"
    assert run_cli("lora", "merge", "--model", "tiny-flux", "--lora", f"{lora_file}:0.7", "--out", tmp_path / "merged") == 0
    common = ["generate", "--prompt", PROMPT, "--steps", "3", "--seed", "4", "--width", "32", "--height", "32"]
    assert run_cli(*common, "--model", "tiny-flux", "--lora", f"{lora_file}:0.7", "--out", tmp_path / "attached.png") == 0
    assert run_cli(*common, "--model", tmp_path / "merged", "--out", tmp_path / "merged.png") == 0
    assert run_cli(*common, "--model", "tiny-flux", "--out", tmp_path / "base.png") == 0
    attached = _pixels(tmp_path / "attached.png")
    merged_off = np.abs(attached - _pixels(tmp_path / "merged.png"))  # fp32 rounding of W + delta vs W x + delta x
    lora_effect = np.abs(attached - _pixels(tmp_path / "base.png"))
    assert merged_off.max() <= 3 and merged_off.mean() < 0.1 * lora_effect.mean()
