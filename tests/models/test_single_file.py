import json
import socket

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tunelab.errors import TunelabError
from tunelab.formats.sd_checkpoint import save_single_file
from tunelab.models.presets import build_preset
from tunelab.models.single_file import (
    CONFIGS_DIR,
    REQUIRED_CONFIG_FILES,
    build_clip_bpe_tokenizer,
    detect_variant,
    load_single_file,
    load_tokenizer,
)

COMPONENTS = ("unet", "vae", "text_encoder")
PROMPT = "a photo of a dog"


class NetworkAttempts(list):
    """Every socket connect / name lookup made while installed; each one is refused."""

    def install(self, monkeypatch):
        def refuse(*args, **kwargs):
            self.append(args)
            raise OSError("network access is not allowed in this test")

        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(socket.socket, "connect", refuse)
        monkeypatch.setattr(socket.socket, "connect_ex", refuse)
        monkeypatch.setattr(socket, "getaddrinfo", refuse)
        return self


@pytest.fixture(scope="module")
def tiny_sd():
    pipeline = build_preset("tiny-sd", seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def tiny_config_dir(tiny_sd, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd-diffusers")
    tiny_sd.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def fp32_file(tiny_sd, tmp_path_factory):
    return save_single_file(tiny_sd, tmp_path_factory.mktemp("single") / "tiny-fp32.safetensors", dtype=torch.float32)


@pytest.fixture(scope="module")
def offline_reload(fp32_file, tiny_config_dir):
    with pytest.MonkeyPatch.context() as monkeypatch:
        attempts = NetworkAttempts().install(monkeypatch)
        pipeline = load_single_file(fp32_file, config_dir=tiny_config_dir)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, attempts


def assert_same_weights(expected_pipeline, actual_pipeline, expected_transform=lambda tensor: tensor):
    for component in COMPONENTS:
        expected = getattr(expected_pipeline, component).state_dict()
        actual = getattr(actual_pipeline, component).state_dict()
        assert actual.keys() == expected.keys(), component
        for name, tensor in expected.items():
            assert actual[name].dtype == tensor.dtype, f"{component}.{name}"
            assert torch.equal(actual[name], expected_transform(tensor)), f"{component}.{name}"


def generate(pipeline) -> np.ndarray:
    return pipeline(PROMPT, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images


def test_fp32_round_trip_has_identical_weights_without_network(tiny_sd, offline_reload):
    reloaded, network_attempts = offline_reload

    assert network_attempts == []
    assert_same_weights(tiny_sd, reloaded)
    assert type(reloaded.scheduler) is type(tiny_sd.scheduler)
    assert reloaded.tokenizer(PROMPT).input_ids == tiny_sd.tokenizer(PROMPT).input_ids


def test_fp32_round_trip_generates_the_same_image(tiny_sd, offline_reload):
    reloaded, _ = offline_reload

    assert np.array_equal(generate(reloaded), generate(tiny_sd))


def test_written_file_uses_original_layout_names(fp32_file):
    with safe_open(str(fp32_file), framework="pt") as reader:
        names = set(reader.keys())

    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in names
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in names
    assert "model.diffusion_model.output_blocks.1.1.conv.weight" in names
    assert "first_stage_model.decoder.mid.attn_1.q.weight" in names
    assert not any(name.startswith("cond_stage_model.transformer.embeddings") for name in names)


def test_fp16_export_halves_the_size_and_round_trips(tiny_sd, tiny_config_dir, fp32_file, tmp_path):
    fp16_file = save_single_file(tiny_sd, tmp_path / "tiny-fp16.safetensors", dtype=torch.float16)

    assert fp16_file.stat().st_size < 0.55 * fp32_file.stat().st_size
    reloaded = load_single_file(fp16_file, config_dir=tiny_config_dir)  # torch_dtype defaults to float32
    assert_same_weights(tiny_sd, reloaded, expected_transform=lambda tensor: tensor.half().float())


def test_ckpt_loads_through_weights_only_torch_load(tiny_sd, tiny_config_dir, fp32_file, tmp_path, monkeypatch):
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(fp32_file)), "global_step": 500}, ckpt)
    torch_load_calls = []
    real_torch_load = torch.load

    def recording_torch_load(*args, **kwargs):
        torch_load_calls.append(kwargs)
        return real_torch_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_torch_load)
    reloaded = load_single_file(ckpt, config_dir=tiny_config_dir)

    assert torch_load_calls and all(call.get("weights_only") is True for call in torch_load_calls)
    assert_same_weights(tiny_sd, reloaded)


class CreatesMarkerFileWhenUnpickled:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_ckpt_with_pickle_payload_is_refused(tiny_config_dir, fp32_file, tmp_path):
    marker = tmp_path / "payload-ran"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": load_file(str(fp32_file)), "callbacks": CreatesMarkerFileWhenUnpickled(marker)}, ckpt)

    with pytest.raises(TunelabError, match="refusing to load evil.ckpt: .*unsafe pickle"):
        load_single_file(ckpt, config_dir=tiny_config_dir)
    assert not marker.exists()


def test_text_encoder_without_text_model_level_still_loads(tiny_sd, tiny_config_dir, fp32_file, tmp_path):
    # What an old converter writes under transformers >= 5.6: cond_stage_model.transformer.embeddings...
    state = {name.replace("transformer.text_model.", "transformer."): tensor for name, tensor in load_file(str(fp32_file)).items()}
    legacy_file = tmp_path / "legacy.safetensors"
    save_file(state, str(legacy_file))

    assert_same_weights(tiny_sd, load_single_file(legacy_file, config_dir=tiny_config_dir))


def test_prediction_type_overrides_the_scheduler(tiny_config_dir, fp32_file):
    reloaded = load_single_file(fp32_file, config_dir=tiny_config_dir, prediction_type="v_prediction")

    assert reloaded.scheduler.config.prediction_type == "v_prediction"
    with pytest.raises(TunelabError, match="unknown prediction type 'x0'"):
        load_single_file(fp32_file, config_dir=tiny_config_dir, prediction_type="x0")


def test_config_that_does_not_fit_the_weights_is_a_clear_error(fp32_file, tmp_path):
    with pytest.raises(TunelabError, match="cannot build the UNet from tiny-fp32.safetensors"):
        load_single_file(fp32_file, config_dir=CONFIGS_DIR / "sd15")
    with pytest.raises(TunelabError, match="missing model_index.json"):
        load_single_file(fp32_file, config_dir=tmp_path)


def fake_original_state_dict(text_encoder_key: str, context_width: int, in_channels: int = 4) -> dict[str, torch.Tensor]:
    """Just the tensors the detector reads, with real shapes, on the meta device (no memory)."""

    def meta(*shape):
        return torch.empty(*shape, device="meta")

    return {
        "model.diffusion_model.input_blocks.0.0.weight": meta(320, in_channels, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": meta(320, context_width),
        "first_stage_model.encoder.conv_in.weight": meta(128, 3, 3, 3),
        text_encoder_key: meta(49408, context_width),
    }


SD1_TEXT_KEY = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD2_TEXT_KEY = "cond_stage_model.model.token_embedding.weight"


def test_variant_detection_reads_text_encoder_layout_and_cross_attention_width():
    assert detect_variant(fake_original_state_dict(SD1_TEXT_KEY, 768)) == "sd15"
    assert detect_variant(fake_original_state_dict(SD2_TEXT_KEY, 1024)) == "sd21"

    with pytest.raises(TunelabError, match="cross-attention width 1024"):
        detect_variant(fake_original_state_dict(SD1_TEXT_KEY, 1024))
    with pytest.raises(TunelabError, match="9 input channels"):
        detect_variant(fake_original_state_dict(SD1_TEXT_KEY, 768, in_channels=9))


def test_sdxl_refiner_and_foreign_checkpoints_are_refused(tmp_path):
    sdxl = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
        "conditioner.embedders.1.model.positional_embedding": torch.zeros(77, 1280),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
    }
    save_file(sdxl, str(tmp_path / "sdxl.safetensors"))
    save_file({"lora_unet_down.alpha": torch.ones(())}, str(tmp_path / "lora.safetensors"))

    with pytest.raises(TunelabError, match="SDXL checkpoint without both text encoders .* e.g. the refiner"):
        load_single_file(tmp_path / "sdxl.safetensors")
    with pytest.raises(TunelabError, match="not a Stable Diffusion checkpoint"):
        load_single_file(tmp_path / "lora.safetensors")


@pytest.mark.parametrize(
    "variant, cross_attention_dim, text_layers, hidden_act, scheduler_class, prediction_type",
    [
        ("sd15", 768, 12, "quick_gelu", "PNDMScheduler", "epsilon"),
        ("sd21", 1024, 23, "gelu", "DDIMScheduler", "v_prediction"),
    ],
)
def test_shipped_config_is_complete_and_loads_offline(
    variant, cross_attention_dim, text_layers, hidden_act, scheduler_class, prediction_type, monkeypatch
):
    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig

    attempts = NetworkAttempts().install(monkeypatch)
    folder = CONFIGS_DIR / variant

    assert all((folder / name).is_file() for name in REQUIRED_CONFIG_FILES)
    model_index = StableDiffusionPipeline.load_config(folder)
    assert {name for name, spec in model_index.items() if isinstance(spec, list) and spec[0]} == {
        "scheduler", "text_encoder", "tokenizer", "unet", "vae",
    }
    assert all((folder / name).is_dir() for name in ("scheduler", "text_encoder", "tokenizer", "unet", "vae"))

    unet = UNet2DConditionModel.load_config(folder / "unet")
    assert list(unet["block_out_channels"]) == [320, 640, 1280, 1280]
    assert unet["cross_attention_dim"] == cross_attention_dim
    assert list(AutoencoderKL.load_config(folder / "vae")["block_out_channels"]) == [128, 256, 512, 512]
    text = CLIPTextConfig.from_pretrained(folder / "text_encoder", local_files_only=True)
    assert (text.hidden_size, text.num_hidden_layers, text.hidden_act) == (cross_attention_dim, text_layers, hidden_act)
    scheduler = getattr(diffusers, scheduler_class).from_pretrained(folder / "scheduler")
    assert scheduler.config.prediction_type == prediction_type
    assert model_index["scheduler"] == ["diffusers", scheduler_class]
    assert json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"] == 77
    assert attempts == []


def test_shipped_clip_tokenizer_reproduces_clip_ids():
    tokenizer = build_clip_bpe_tokenizer()

    assert len(tokenizer) == 49408
    assert tokenizer(PROMPT).input_ids == [49406, 320, 1125, 539, 320, 1929, 49407]
    # SD 1.x pads with <|endoftext|>, SD 2.x with "!" (id 0), as their tokenizer configs say.
    assert load_tokenizer(CONFIGS_DIR / "sd15").pad_token_id == 49407
    assert load_tokenizer(CONFIGS_DIR / "sd21").pad_token_id == 0


def test_sdxl_single_file_round_trips_through_diffusers_converters(tmp_path):
    """tiny-sdxl written in the SGM layout (UNet, VAE, CLIP-L, OpenCLIP with fused in_proj) and read back
    by diffusers' own original-layout converters: every weight as it was."""
    from diffusers import StableDiffusionXLPipeline

    from tunelab.formats.sd_checkpoint import save_single_file
    from tunelab.models.presets import build_preset

    pipeline = build_preset("tiny-sdxl")
    folder = tmp_path / "tiny-sdxl"
    pipeline.save_pretrained(folder)
    path = save_single_file(pipeline, tmp_path / "sdxl.safetensors", dtype=torch.float32)
    with safe_open(path, "pt") as handle:
        keys = set(handle.keys())
    assert "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight" in keys
    assert "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight" in keys

    loaded = load_single_file(path, config_dir=folder)
    assert isinstance(loaded, StableDiffusionXLPipeline)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        expected = getattr(pipeline, name).state_dict()
        got = getattr(loaded, name).state_dict()
        assert set(got) == set(expected), name
        for key, value in expected.items():
            assert torch.equal(got[key], value), f"{name}.{key}"
    assert loaded.tokenizer_2("a photo").input_ids == pipeline.tokenizer_2("a photo").input_ids


def test_shipped_sdxl_config_is_picked_and_complete():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig

    state = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(640, 2048),
        "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": torch.zeros(77, 768),
        "conditioner.embedders.1.model.positional_embedding": torch.zeros(77, 1280),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
    }
    assert detect_variant(state) == "sdxl"
    folder = CONFIGS_DIR / "sdxl"
    unet = UNet2DConditionModel.load_config(folder / "unet")
    assert (unet["cross_attention_dim"], unet["addition_embed_type"], unet["projection_class_embeddings_input_dim"]) == (2048, "text_time", 2816)
    second = CLIPTextConfig.from_pretrained(folder / "text_encoder_2", local_files_only=True)
    assert (second.hidden_size, second.num_hidden_layers, second.projection_dim, second.hidden_act) == (1280, 32, 1280, "gelu")
    assert load_tokenizer(folder, "tokenizer_2").pad_token_id == 0  # "!"
    assert load_tokenizer(folder).pad_token_id == 49407
