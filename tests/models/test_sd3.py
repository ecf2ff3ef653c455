"""SD3 / SD3.5 on `tiny-sd3` and a tiny SD3.5-Medium-shaped folder (dual attention, QK RMS-norm): flow matching
against hand-computed values, LoRA files diffusers reads as we meant, kohya's SD3 names, --no-t5, the full
DreamBooth single file through diffusers' own reader, and what SD3 does not take refused in one line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import tunelab
import tunelab.models.presets
from helpers import run_cli
from tunelab.formats.lora_io import read_lora
from tunelab.models.family import family_for
from tunelab.models.flow_matching import FlowMatchingOptions, flow_matching_batch, shift_sigmas
from tunelab.models.presets import build_preset, build_tiny_sd3
from tunelab.models.sd3 import StableDiffusion3Options
from tunelab.training.options import TrainOptions

PROMPT = "a photo of sks toy"


def _pixels(image):
    return np.asarray(Image.open(image) if not isinstance(image, Image.Image) else image).astype(np.int16)


@pytest.fixture(scope="module")
def medium_folder(tmp_path_factory):
    """SD3.5 Medium's MMDiT-X in miniature, as a diffusers folder."""
    folder = tmp_path_factory.mktemp("tiny-sd35m")
    build_tiny_sd3(medium=True).save_pretrained(folder)
    return folder


def _train(out, model, *extra):
    code = run_cli("train", "lora", "--model", model, "--images", out.parent / "images", "--prompt", PROMPT, "--out", out,
                   "--steps", "2", "--learning-rate", "2e-2", "--rank", "4", "--log-with", "none", *extra)
    assert code == 0
    return out / "lora.safetensors"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, subject_images, medium_folder):
    """Three 2-step LoRAs: tiny-sd3 (attention and MLPs, both CLIPs, PEFT layout), the SD3.5-Medium folder
    (kohya layout) and tiny-sd3 with --no-t5 (PEFT)."""
    root = tmp_path_factory.mktemp("sd3-runs")
    (root / "images").symlink_to(subject_images)
    return {
        "sd3": _train(root / "sd3", "tiny-sd3", "--targets", "attention", "feedforward", "--train-text-encoder", "--format", "peft",
                      "--weighting-scheme", "cosmap", "--flow-shift", "2"),
        "medium": _train(root / "medium", medium_folder, "--format", "kohya"),
        "no-t5": _train(root / "no-t5", "tiny-sd3", "--no-t5", "--format", "peft"),
    }


def test_flow_matching_noise_target_and_shift_against_hand_computed_values():
    latents = torch.tensor([2.0, -4.0]).reshape(2, 1, 1, 1)
    noise = torch.tensor([-1.0, 8.0]).reshape(2, 1, 1, 1)
    batch = flow_matching_batch(latents, noise, torch.tensor([0.25, 0.5]))
    assert batch.noisy.flatten().tolist() == [1.25, 2.0]  # 0.75 * 2 + 0.25 * -1, 0.5 * -4 + 0.5 * 8
    assert batch.target.flatten().tolist() == [-3.0, 12.0]  # noise - latents
    assert batch.timesteps.tolist() == [250.0, 500.0]
    # shift 3: 3 * 0.5 / (1 + 2 * 0.5) = 0.75, 3 * 0.25 / (1 + 2 * 0.25) = 0.5; shift 1 changes nothing
    assert shift_sigmas(torch.tensor([0.5, 0.25, 0.0, 1.0]), 3.0).tolist() == [0.75, 0.5, 0.0, 1.0]
    assert shift_sigmas(torch.tensor([0.3]), 1.0).tolist() == pytest.approx([0.3])


def test_sd3_draws_shifted_sigmas_by_its_weighting_scheme_and_weights_the_loss_as_diffusers():
    pipeline = build_preset("tiny-sd3")
    options = TrainOptions(model="tiny-sd3", images="x", out="y")
    latents = torch.zeros(4, 4, 16, 16)
    default = family_for(pipeline, options)
    u = torch.sigmoid(torch.randn(4, generator=torch.Generator().manual_seed(3)))  # logit-normal (0, 1)
    torch.testing.assert_close(default.sample_sigmas(latents, torch.Generator().manual_seed(3)), 3 * u / (1 + 2 * u))
    assert default.loss_weights(torch.tensor([250.0, 900.0]), None).tolist() == [1.0, 1.0]

    uniform = family_for(pipeline, options, {StableDiffusion3Options: StableDiffusion3Options(weighting_scheme="sigma_sqrt"),
                                             FlowMatchingOptions: FlowMatchingOptions(flow_shift=1.0)})
    u = torch.rand(4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(uniform.sample_sigmas(latents, torch.Generator().manual_seed(3)), u)
    assert uniform.loss_weights(torch.tensor([500.0, 250.0]), None).tolist() == [4.0, 16.0]  # sigma ** -2
    cosmap = family_for(pipeline, options, StableDiffusion3Options(weighting_scheme="cosmap"))
    assert cosmap.loss_weights(torch.tensor([500.0]), None).tolist() == pytest.approx([4 / math.pi])  # 2 / (pi (1 - 1 + 0.5))


def test_peft_lora_loads_in_diffusers_and_gives_tunelabs_image(tmp_path, runs, capsys):
    lora_file = runs["sd3"]
    with safe_open(lora_file, "pt") as handle:
        keys = set(handle.keys())
    assert "transformer.transformer_blocks.0.attn.add_k_proj.lora_A.weight" in keys
    assert "transformer.transformer_blocks.0.ff_context.net.2.lora_B.weight" in keys
    assert any(key.startswith("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A") for key in keys)
    assert not any(key.startswith("text_encoder_3.") for key in keys)  # T5 stays frozen

    common = ["generate", "--model", "tiny-sd3", "--prompt", PROMPT, "--negative-prompt", "blurry", "--steps", "3",
              "--seed", "5", "--guidance", "4"]
    assert run_cli(*common, "--out", tmp_path / "lora.png", "--lora", lora_file) == 0
    assert run_cli(*common, "--out", tmp_path / "base.png") == 0
    pipeline = build_preset("tiny-sd3")
    pipeline.load_lora_weights(str(lora_file))
    reference = pipeline(PROMPT, negative_prompt="blurry", num_inference_steps=3, guidance_scale=4, max_sequence_length=64,
                         generator=torch.Generator().manual_seed(5)).images[0]
    assert np.array_equal(_pixels(tmp_path / "lora.png"), _pixels(reference))
    assert np.abs(_pixels(tmp_path / "lora.png") - _pixels(tmp_path / "base.png")).max() > 0
    assert run_cli("lora", "check", lora_file, "--model", "tiny-sd3") == 3  # A1111 runs no SD3 model
    assert f"diffusers: {len(read_lora(lora_file)[0])} applied, 0 skipped" in capsys.readouterr().out


def test_sd35_medium_kohya_lora_reads_back_and_matches_diffusers_with_its_peft_conversion(tmp_path, runs, medium_folder):
    """diffusers reads no kohya SD3 file: the kohya file tunelab writes is converted to PEFT by tunelab and loaded in
    diffusers, and tunelab generate with the kohya file gives diffusers' image."""
    kohya_file = runs["medium"]
    with safe_open(kohya_file, "pt") as handle:
        names = {key.split(".")[0] for key in handle.keys()}
        metadata = handle.metadata()
        qkv = handle.get_tensor("lora_unet_joint_blocks_0_x_block_attn2_qkv.lora_up.weight")
    assert {"lora_unet_joint_blocks_0_x_block_attn_qkv", "lora_unet_joint_blocks_0_context_block_attn_qkv",
            "lora_unet_joint_blocks_0_x_block_attn2_qkv", "lora_unet_joint_blocks_0_x_block_attn2_proj",
            "lora_unet_joint_blocks_1_x_block_attn_proj"} <= names
    assert qkv.shape == (3 * 16, 3 * 4)  # q, k, v rows; three rank-4 parts side by side
    assert metadata["ss_base_model_version"] == "sd3"

    peft_file = tmp_path / "peft.safetensors"
    assert run_cli("lora", "convert", kohya_file, "--to", "peft", "--out", peft_file) == 0
    common = ["generate", "--model", medium_folder, "--prompt", PROMPT, "--steps", "3", "--seed", "2", "--guidance", "3"]
    assert run_cli(*common, "--out", tmp_path / "kohya.png", "--lora", kohya_file) == 0
    pipeline = StableDiffusion3Pipeline.from_pretrained(medium_folder)
    pipeline.load_lora_weights(str(peft_file))
    reference = pipeline(PROMPT, num_inference_steps=3, guidance_scale=3, max_sequence_length=64,
                         generator=torch.Generator().manual_seed(2)).images[0]
    assert np.array_equal(_pixels(tmp_path / "kohya.png"), _pixels(reference))


def test_a_kohya_named_sd3_file_round_trips_through_tunelabs_reader(tmp_path):
    """A file named as sd-scripts' lora_sd3.py writes SD3 LoRAs (fused qkv with a block-diagonal up, CLIP-L/G as
    te1/te2, the final modulations stored (shift, scale), modules outside the blocks): read into diffusers' modules
    with the weight changes it holds, and written back as the same kohya modules with the same changes."""
    generator = torch.Generator().manual_seed(0)
    width, rank = 16, 2

    def pair(out_features, in_features):
        return torch.randn(rank, in_features, generator=generator), torch.randn(out_features, rank, generator=generator)

    tensors = {}
    down, up = pair(3 * width, width)
    up[width:2 * width] = 0  # k untouched: a block-diagonal file of q and v
    modules = {"lora_unet_joint_blocks_0_x_block_attn_qkv": (down, up),
               "lora_unet_joint_blocks_1_context_block_adaLN_modulation_1": pair(2 * width, width),
               "lora_unet_joint_blocks_0_x_block_mlp_fc2": pair(width, 4 * width),
               "lora_unet_final_layer_adaLN_modulation_1": pair(2 * width, width),
               "lora_unet_context_embedder": pair(width, 48),
               "lora_te2_text_model_encoder_layers_1_self_attn_out_proj": pair(24, 24)}
    for name, (down, up) in modules.items():
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(1.0)}
    path = tmp_path / "kohya.safetensors"
    save_file(tensors, str(path), metadata={"ss_base_model_version": "sd3"})

    lora, _ = read_lora(path)
    assert set(lora) == {"transformer.transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.0.attn.to_v",
                         "transformer.transformer_blocks.1.norm1_context.linear", "transformer.transformer_blocks.0.ff.net.2",
                         "transformer.norm_out.linear", "transformer.context_embedder",
                         "text_encoder_2.encoder.layers.1.self_attn.out_proj"}
    down, up = modules["lora_unet_joint_blocks_0_x_block_attn_qkv"]
    torch.testing.assert_close(lora["transformer.transformer_blocks.0.attn.to_v"].delta(), up[2 * width:] @ down / rank)
    down, up = modules["lora_unet_joint_blocks_1_context_block_adaLN_modulation_1"]
    shift, scale = (up @ down / rank).chunk(2)  # the original's order; diffusers' AdaLayerNormContinuous is (scale, shift)
    torch.testing.assert_close(lora["transformer.transformer_blocks.1.norm1_context.linear"].delta(), torch.cat([scale, shift]))
    down, up = modules["lora_unet_final_layer_adaLN_modulation_1"]
    shift, scale = (up @ down / rank).chunk(2)
    torch.testing.assert_close(lora["transformer.norm_out.linear"].delta(), torch.cat([scale, shift]))

    again = tmp_path / "again.safetensors"
    assert run_cli("lora", "convert", path, "--to", "kohya", "--out", again) == 0
    with safe_open(again, "pt") as handle:
        assert set(handle.keys()) == set(tensors)  # the same kohya modules, q and v fused again
    back, _ = read_lora(again)
    assert set(back) == set(lora)
    for key, module in lora.items():
        torch.testing.assert_close(back[key].delta(), module.delta(), atol=1e-6, rtol=1e-5)


def test_no_t5_trains_and_generates_what_diffusers_makes_without_t5(tmp_path, runs):
    lora_file = runs["no-t5"]
    common = ["generate", "--model", "tiny-sd3", "--prompt", PROMPT, "--steps", "3", "--seed", "7", "--guidance", "3",
              "--lora", lora_file]
    assert run_cli(*common, "--no-t5", "--out", tmp_path / "no-t5.png") == 0
    assert run_cli(*common, "--out", tmp_path / "t5.png") == 0
    pipeline = build_preset("tiny-sd3")
    pipeline.register_modules(text_encoder_3=None, tokenizer_3=None)
    pipeline.load_lora_weights(str(lora_file))
    reference = pipeline(PROMPT, num_inference_steps=3, guidance_scale=3, generator=torch.Generator().manual_seed(7)).images[0]
    assert np.array_equal(_pixels(tmp_path / "no-t5.png"), _pixels(reference))
    assert np.abs(_pixels(tmp_path / "no-t5.png") - _pixels(tmp_path / "t5.png")).max() > 0


@pytest.fixture(scope="module")
def dreambooth_medium(tmp_path_factory, subject_images, medium_folder):
    """One full fine-tuning step on the SD3.5-Medium-shaped folder, with its single file."""
    out = tmp_path_factory.mktemp("sd35m-dreambooth")
    assert run_cli("train", "dreambooth", "--model", medium_folder, "--images", subject_images, "--prompt", PROMPT, "--out", out,
                   "--steps", "1", "--learning-rate", "1e-3", "--single-file", "--log-with", "none") == 0
    return out


def test_dreambooth_single_file_loads_back_through_diffusers_from_single_file(dreambooth_medium, medium_folder):
    out = dreambooth_medium
    with safe_open(out / "model.safetensors", "pt") as handle:
        keys = set(handle.keys())
    assert {"model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight", "model.diffusion_model.joint_blocks.0.x_block.attn.ln_q.weight",
            "text_encoders.clip_g.transformer.text_projection.weight", "text_encoders.t5xxl.transformer.shared.weight"} <= keys
    trained = StableDiffusion3Pipeline.from_pretrained(out / "pipeline")
    loaded = StableDiffusion3Pipeline.from_single_file(str(out / "model.safetensors"), config=str(out / "pipeline"),
                                                       local_files_only=True, torch_dtype=torch.float32)
    base = StableDiffusion3Pipeline.from_pretrained(medium_folder)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        expected, got = getattr(trained, name).state_dict(), getattr(loaded, name).state_dict()
        assert set(got) == set(expected), name
        assert all(torch.equal(got[key], expected[key]) for key in expected), name
    changed = base.transformer.state_dict()
    assert any(not torch.equal(changed[key], value) for key, value in trained.transformer.state_dict().items())


def test_sd3_options_left_at_their_defaults_are_not_refused_elsewhere(tmp_path, subject_images):
    """A form (the web UI) shows every option at its default: `--t5` left on is no SD3 option given to SD."""
    from tunelab.training.prepare import prepare_run

    values = {"model": "tiny-sd", "images": str(subject_images), "out": str(tmp_path), "prompt": PROMPT, "t5": True}
    assert prepare_run("lora", values).family_options[StableDiffusion3Options] == StableDiffusion3Options()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "hypernetwork"], "Hypernetwork is not supported on SD3 models"),
        (["train", "textual_inversion", "--token", "<sks>", "--init-word", "toy"], "Textual Inversion is not supported on SD3"),
        (["train", "lora", "--min-snr-gamma", "5"], "--min-snr-gamma weights DDPM timesteps"),
        (["train", "lora", "--flux-guidance", "2"], "--flux-guidance applies to Flux.1 models; SD3 models do not take it"),
        (["train", "lora", "--timestep-sampling", "uniform"], "SD3 draws sigma by --weighting-scheme"),
        (["train", "lora", "--model", "tiny-flux", "--no-t5"], "--no-t5 applies to SD3 models; Flux.1 models do not take it"),
        (["train", "lora", "--model", "tiny-sd", "--weighting-scheme", "cosmap"], "--weighting-scheme applies to SD3 models"),
        (["train", "lora", "--mode-scale", "1.2"], "--mode-scale applies to --weighting-scheme mode"),
        (["generate", "--model", "tiny-flux", "--no-t5"], "--no-t5 applies to models whose T5 encoder is optional"),
    ],
)
def test_what_sd3_does_not_take_is_refused_in_one_line_before_loading(tmp_path, subject_images, capsys, monkeypatch, args, message):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(tunelab.models.presets, "PRESETS", dict.fromkeys(tunelab.models.presets.PRESETS, no_loading))
    model = [] if "--model" in args else ["--model", "tiny-sd3"]
    if args[0] == "generate":
        code = run_cli(*args, *model, "--prompt", PROMPT, "--out", tmp_path / "x.png")
    else:
        code = run_cli(*args, *model, "--images", subject_images, "--prompt", PROMPT, "--out", tmp_path, "--steps", "1",
                       "--log-with", "none")
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_the_shipped_real_size_config_is_sd35_medium_as_diffusers_recognises_it():
    """`bench speed --family sd3` builds SD3.5 Medium (on the meta device here: shapes only): diffusers' single-file
    detection names a checkpoint of its shapes sd35_medium, and the encoders are CLIP-L, CLIP-G and T5-XXL."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    from tunelab.bench.random_model import config_folder, random_pipeline

    pipeline = random_pipeline(config_folder("sd3"), "meta", torch.bfloat16)
    transformer = pipeline.transformer
    state = {f"model.diffusion_model.{name}": tensor for name, tensor in (
        ("pos_embed", transformer.pos_embed.pos_embed),
        ("joint_blocks.0.context_block.adaLN_modulation.1.bias", transformer.transformer_blocks[0].norm1_context.linear.bias))}
    assert infer_diffusers_model_type(state) == "sd35_medium"
    assert len(transformer.config.dual_attention_layers) == 13 and transformer.config.qk_norm == "rms_norm"
    counts = {name: sum(p.numel() for p in getattr(pipeline, name).parameters()) for name in ("text_encoder", "text_encoder_2", "text_encoder_3")}
    assert counts == {"text_encoder": 123_650_304, "text_encoder_2": 694_659_840, "text_encoder_3": 4_762_310_656}


def test_tunelab_reads_the_dreambooth_single_file_back_and_picks_shipped_configs_by_shape(dreambooth_medium):
    from diffusers import SD3Transformer2DModel

    from tunelab.models.loading import pipeline_class_name
    from tunelab.models.sd3_single_file import sd3_config_dirs
    from tunelab.models.single_file import CONFIGS_DIR, load_single_file

    out = dreambooth_medium
    assert pipeline_class_name(out / "model.safetensors") == "StableDiffusion3Pipeline"
    trained = StableDiffusion3Pipeline.from_pretrained(out / "pipeline")
    loaded = load_single_file(out / "model.safetensors", config_dir=out / "pipeline")
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        expected, got = getattr(trained, name).state_dict(), getattr(loaded, name).state_dict()
        assert set(got) == set(expected) and all(torch.equal(got[key], expected[key]) for key in expected), name

    for variant in ("sd3_medium", "sd35_medium", "sd35_large"):  # each shipped transformer config, as diffusers detects its shapes
        with torch.device("meta"):
            transformer = SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(CONFIGS_DIR / variant / "transformer"))
        last = transformer.config.num_layers - 1
        state = {"model.diffusion_model.pos_embed": transformer.pos_embed.pos_embed,
                 "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": transformer.transformer_blocks[0].norm1_context.linear.bias,
                 f"model.diffusion_model.joint_blocks.{last}.x_block.mlp.fc1.weight": transformer.transformer_blocks[last].ff.net[0].proj.weight}
        assert sd3_config_dirs(state, CONFIGS_DIR, "x") == (CONFIGS_DIR / variant, CONFIGS_DIR / "sd35_medium"), variant


def test_training_samples_read_the_runs_t5_length(tmp_path, subject_images, monkeypatch):
    """The sample images show the model as training conditions it: T5 reads --t5-max-length tokens there too."""
    lengths = []
    encode_t5 = StableDiffusion3Pipeline._get_t5_prompt_embeds

    def recording(self, *args, max_sequence_length=256, **kwargs):
        lengths.append(max_sequence_length)
        return encode_t5(self, *args, max_sequence_length=max_sequence_length, **kwargs)

    monkeypatch.setattr(StableDiffusion3Pipeline, "_get_t5_prompt_embeds", recording)
    result = tunelab.train("lora", model="tiny-sd3", images=subject_images, prompt=PROMPT, out=tmp_path / "run", steps=1,
                           rank=2, log_with="none", sample_every=1, sample_steps=1, t5_max_length=16)
    assert (tmp_path / "run" / "samples" / "step-0000001-0.png").is_file() and result.artifact.is_file()
    assert lengths and set(lengths) == {16}  # the prompt's and the negative's encodings (16 < the tiny tokenizer's 64)
