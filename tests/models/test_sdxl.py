"""SDXL on `tiny-sdxl`: LoRA files in SGM names that diffusers reads as we meant, both text
encoders in prompts, and the techniques that train on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from helpers import run_cli
from tunelab.models.presets import build_preset

PROMPT = "a photo of sks toy"


def _pixels(path_or_image):
    image = Image.open(path_or_image) if not isinstance(path_or_image, Image.Image) else path_or_image
    return np.asarray(image).astype(np.int16)


@pytest.fixture(scope="module")
def sdxl_lora(tmp_path_factory, subject_images):
    """A kohya LoRA on both text encoders and the UNet (attention, feed-forward, conv), 12 steps."""
    out = tmp_path_factory.mktemp("sdxl-lora")
    code = run_cli(
        "train", "lora", "--model", "tiny-sdxl", "--images", subject_images, "--prompt", PROMPT, "--out", out,
        "--steps", "12", "--learning-rate", "1e-2", "--rank", "4", "--train-text-encoder",
        "--targets", "attention", "feedforward", "conv", "--log-with", "none",
    )
    assert code == 0
    return out / "lora.safetensors"


def test_lora_file_uses_sgm_names_and_diffusers_gives_the_image_tunelab_generates(tmp_path, sdxl_lora):
    from diffusers import EulerDiscreteScheduler

    with safe_open(sdxl_lora, "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    names = {key.split(".")[0] for key in keys}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k" in names  # down_blocks.1.attentions.0
    assert "lora_unet_output_blocks_0_0_in_layers_2" in names  # up_blocks.0.resnets.0.conv1
    assert "lora_unet_middle_block_1_proj_in" in names
    assert any(name.startswith("lora_te1_text_model_encoder_layers_0_") for name in names)
    assert any(name.startswith("lora_te2_text_model_encoder_layers_1_") for name in names)
    assert not any("down_blocks" in name or "up_blocks" in name or "mid_block" in name for name in names)
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"

    common = ["generate", "--model", "tiny-sdxl", "--prompt", PROMPT, "--steps", "6", "--seed", "3", "--sampler", "euler",
              "--guidance", "5"]
    assert run_cli(*common, "--out", tmp_path / "lora.png", "--lora", sdxl_lora) == 0
    assert run_cli(*common, "--out", tmp_path / "base.png") == 0

    pipeline = build_preset("tiny-sdxl")
    pipeline.scheduler = EulerDiscreteScheduler.from_config(pipeline.scheduler.config)
    pipeline.load_lora_weights(str(sdxl_lora))
    reference = pipeline(PROMPT, num_inference_steps=6, guidance_scale=5,
                         generator=torch.Generator().manual_seed(3)).images[0]
    assert np.array_equal(_pixels(tmp_path / "lora.png"), _pixels(reference))
    assert np.abs(_pixels(tmp_path / "lora.png") - _pixels(tmp_path / "base.png")).max() > 0


def _random_lora(names_and_shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (out_features, in_features) in names_and_shapes.items():
        tensors[f"{name}.lora_down.weight"] = torch.randn(2, in_features, generator=generator)
        tensors[f"{name}.lora_up.weight"] = torch.randn(out_features, 2, generator=generator)
        tensors[f"{name}.alpha"] = torch.tensor(1.0)
    return tensors


# SGM (A1111/ComfyUI/kohya) name -> diffusers name of the same module of tiny-sdxl, written out by hand.
SGM_TO_DIFFUSERS = {
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
    "lora_unet_input_blocks_5_1_proj_out": "lora_unet_down_blocks_1_attentions_1_proj_out",
    "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_v": "lora_unet_mid_block_attentions_0_transformer_blocks_1_attn2_to_v",
    "lora_unet_output_blocks_2_1_transformer_blocks_0_ff_net_2": "lora_unet_up_blocks_0_attentions_2_transformer_blocks_0_ff_net_2",
    "lora_unet_input_blocks_2_0_emb_layers_1": "lora_unet_down_blocks_0_resnets_1_time_emb_proj",
    "lora_te1_text_model_encoder_layers_1_self_attn_out_proj": "lora_te1_text_model_encoder_layers_1_self_attn_out_proj",
    "lora_te2_text_model_encoder_layers_0_mlp_fc1": "lora_te2_text_model_encoder_layers_0_mlp_fc1",
    # diffusers' kohya reader needs an out_proj in each text encoder to recognise its layout
    "lora_te2_text_model_encoder_layers_1_self_attn_out_proj": "lora_te2_text_model_encoder_layers_1_self_attn_out_proj",
}
SHAPES = {  # (out, in) of each module in tiny-sdxl
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (32, 32),
    "lora_unet_input_blocks_5_1_proj_out": (32, 32),
    "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_v": (32, 80),
    "lora_unet_output_blocks_2_1_transformer_blocks_0_ff_net_2": (32, 128),
    "lora_unet_input_blocks_2_0_emb_layers_1": (16, 64),
    "lora_te1_text_model_encoder_layers_1_self_attn_out_proj": (32, 32),
    "lora_te2_text_model_encoder_layers_0_mlp_fc1": (96, 48),
    "lora_te2_text_model_encoder_layers_1_self_attn_out_proj": (48, 48),
}


def test_sgm_named_kohya_lora_matches_the_same_lora_in_diffusers_names(tmp_path):
    from tunelab.formats.lora_io import read_lora, write_lora
    from tunelab.lora.modules import adaptable_modules

    sgm = _random_lora(SHAPES)
    diffusers_named = {key.replace(name, SGM_TO_DIFFUSERS[name]): value for key, value in sgm.items()
                       for name in [key.split(".")[0]]}
    save_file(sgm, tmp_path / "sgm.safetensors")
    save_file(diffusers_named, tmp_path / "diffusers.safetensors")

    outputs = []
    for path in (tmp_path / "sgm.safetensors", tmp_path / "diffusers.safetensors"):
        pipeline = build_preset("tiny-sdxl")
        pipeline.load_lora_weights(str(path))
        outputs.append(pipeline(PROMPT, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images)
    base = build_preset("tiny-sdxl")(PROMPT, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-6)
    assert np.abs(outputs[0] - base).max() > 1e-4

    # tunelab reads both to the same modules (with and without the model's names) and writes SGM back.
    module_keys = list(adaptable_modules(build_preset("tiny-sdxl")))
    from_sgm, _ = read_lora(tmp_path / "sgm.safetensors", module_keys)
    from_diffusers, _ = read_lora(tmp_path / "diffusers.safetensors")
    assert set(from_sgm) == set(from_diffusers) == set(read_lora(tmp_path / "sgm.safetensors")[0])
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q" in from_sgm
    for key, module in from_sgm.items():
        assert torch.equal(module.delta(), from_diffusers[key].delta())
    written = write_lora(from_diffusers, tmp_path / "out.safetensors", "kohya", {"ss_base_model_version": "sdxl_base_v1-0"})
    with safe_open(written, "pt") as handle:
        assert {key.split(".")[0] for key in handle.keys()} == set(SHAPES)


def test_weighted_prompts_use_both_encoders_and_plain_ones_match_diffusers():
    from tunelab.generation.prompt_encoding import encode_prompt_pair

    pipeline = build_preset("tiny-sdxl")
    ours = encode_prompt_pair(pipeline, PROMPT, "blurry")
    theirs = pipeline.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=True, negative_prompt="blurry")
    names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    assert ours["prompt_embeds"].shape == (1, 77, 32 + 48) and ours["pooled_prompt_embeds"].shape == (1, 32)
    for name, expected in zip(names, theirs):
        assert torch.equal(ours[name], expected), name

    weighted = encode_prompt_pair(pipeline, "a photo of (sks:1.4) toy")["prompt_embeds"]
    changed = (weighted != ours["prompt_embeds"]).any(dim=1)[0]  # (80,) features that moved
    assert changed[:32].any() and changed[32:].any()  # both encoders' halves carry the weight


def _unet_output(pipeline, prompt=PROMPT):
    from tunelab.models.family import NoisyBatch, family_for

    family = family_for(pipeline)
    latents = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(11))  # (B, C, h, w)
    with torch.no_grad():
        return family.predict(NoisyBatch(latents, torch.tensor([400]), None), family.encode_prompts([prompt]))


def test_textual_inversion_writes_clip_l_and_clip_g_that_diffusers_loads(tmp_path, subject_images):
    from tunelab.methods.textual_inversion import TextualInversionMethod, TextualInversionOptions
    from tunelab.training.loop import train
    from tunelab.training.options import TrainOptions

    options = TrainOptions(model="tiny-sdxl", images=str(subject_images), out=str(tmp_path), steps=4, learning_rate=0.05,
                           log_with="none")
    method = TextualInversionMethod(TextualInversionOptions(token="<sks-toy>", init_word="toy", vectors=2))
    artifact = train(options, method, {"technique": "textual_inversion"})
    with safe_open(artifact, "pt") as handle:
        vectors = {key: handle.get_tensor(key) for key in handle.keys()}
    assert {key: tuple(v.shape) for key, v in vectors.items()} == {"clip_l": (2, 32), "clip_g": (2, 48)}
    for key, name in (("clip_l", "text_encoder"), ("clip_g", "text_encoder_2")):
        trained_rows = method.family.module(name).get_input_embeddings().weight[-2:]
        assert torch.equal(vectors[key], trained_rows.detach())
        initial = build_preset("tiny-sdxl")
        toy = initial.tokenizer(["toy"], add_special_tokens=False).input_ids[0][0]
        assert not torch.equal(vectors[key][0], getattr(initial, name).get_input_embeddings().weight[toy])

    # diffusers' documented SDXL recipe: each file entry into its own encoder; then the same prompt embedding as trained.
    pipeline = build_preset("tiny-sdxl")
    pipeline.load_textual_inversion(vectors["clip_l"], token="<sks-toy>", text_encoder=pipeline.text_encoder, tokenizer=pipeline.tokenizer)
    pipeline.load_textual_inversion(vectors["clip_g"], token="<sks-toy>", text_encoder=pipeline.text_encoder_2, tokenizer=pipeline.tokenizer_2)
    prompt = "a photo of <sks-toy>"
    theirs = pipeline.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
    trained = method.family.pipeline
    expected = trained.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)  # expands the token as trained
    torch.testing.assert_close(theirs[0], expected[0])
    torch.testing.assert_close(theirs[2], expected[2])

    common = ["generate", "--model", "tiny-sdxl", "--prompt", prompt, "--steps", "3", "--seed", "2", "--sampler", "euler",
              "--guidance", "5"]
    assert run_cli(*common, "--embedding", artifact, "--out", tmp_path / "ti.png") == 0
    pipeline.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
    reference = pipeline(prompt, num_inference_steps=3, guidance_scale=5,
                         generator=torch.Generator().manual_seed(2)).images[0]
    assert np.array_equal(_pixels(tmp_path / "ti.png"), _pixels(reference))


def test_hypernetwork_trains_on_both_context_widths_and_reattaches_exactly(tmp_path, subject_images):
    from tunelab.methods.hypernetwork import HypernetworkMethod, HypernetworkOptions, attach_hypernetworks
    from tunelab.training.loop import train
    from tunelab.training.options import TrainOptions

    options = TrainOptions(model="tiny-sdxl", images=str(subject_images), out=str(tmp_path), prompt=PROMPT, steps=4,
                           learning_rate=1e-2, log_with="none")
    method = HypernetworkMethod(HypernetworkOptions(activation="relu"))
    artifact = train(options, method, {"technique": "hypernetwork"})
    assert method.hypernetwork.widths == [32, 80]  # the UNet's self-attention width and the two encoders' 32 + 48

    trained = _unet_output(method.family.pipeline)
    pipeline = build_preset("tiny-sdxl")
    base = _unet_output(pipeline)
    attach_hypernetworks(pipeline, [(artifact, 1.0)])
    torch.testing.assert_close(_unet_output(pipeline), trained)
    assert not torch.allclose(base, trained, atol=1e-5)


def test_dreambooth_fine_tunes_unet_and_both_text_encoders_into_an_sdxl_folder_and_single_file(tmp_path, subject_images):
    from diffusers import StableDiffusionXLPipeline

    from tunelab.models.single_file import load_single_file

    assert run_cli("train", "dreambooth", "--model", "tiny-sdxl", "--images", subject_images, "--prompt", PROMPT, "--steps", "3",
                   "--learning-rate", "1e-3", "--log-with", "none", "--out", tmp_path, "--train-text-encoder", "--single-file") == 0
    saved = StableDiffusionXLPipeline.from_pretrained(tmp_path / "pipeline")
    single = load_single_file(tmp_path / "model.safetensors", config_dir=tmp_path / "pipeline")
    base = build_preset("tiny-sdxl")
    for name in ("unet", "text_encoder", "text_encoder_2"):
        changed = [key for key, value in getattr(saved, name).state_dict().items()
                   if not torch.equal(value, getattr(base, name).state_dict()[key])]
        assert changed, f"{name} was not trained"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        for key, value in getattr(saved, name).state_dict().items():
            assert torch.equal(getattr(single, name).state_dict()[key], value), f"{name}.{key}"
    for key, value in saved.vae.state_dict().items():
        assert torch.equal(value, base.vae.state_dict()[key])
    assert not torch.allclose(_unet_output(saved), _unet_output(base), atol=1e-5)


def test_lora_tools_on_sdxl_merge_then_extract_gives_the_lora_back_in_sgm_names(tmp_path, sdxl_lora):
    from tunelab.formats.lora_io import read_lora

    assert run_cli("lora", "merge", "--model", "tiny-sdxl", "--lora", sdxl_lora, "--out", tmp_path / "merged") == 0
    assert run_cli("lora", "extract", "--base", "tiny-sdxl", "--tuned", tmp_path / "merged", "--rank", "4", "--clamp-quantile", "1",
                   "--out", tmp_path / "extracted.safetensors") == 0
    with safe_open(tmp_path / "extracted.safetensors", "pt") as handle:
        names = {key.split(".")[0] for key in handle.keys()}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    assert any(name.startswith("lora_te2_") for name in names)
    original, _ = read_lora(sdxl_lora)
    extracted, _ = read_lora(tmp_path / "extracted.safetensors")
    # Linear modules that changed (CLIP-L's last layer gets no gradient: SDXL reads its penultimate states).
    linear = [key for key, module in original.items() if module.down.dim() == 2 and module.delta().abs().max() > 0]
    assert linear and set(linear) <= set(extracted)
    for key in linear:
        torch.testing.assert_close(extracted[key].delta(), original[key].delta(), atol=2e-5, rtol=1e-3)
