from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tunelab.errors import TunelabError
from tunelab.formats.sd_checkpoint import (
    pipeline_to_original_state_dict,
    save_single_file,
    sd1_text_encoder_to_original,
    unet_to_original,
    vae_to_original,
)
from tunelab.models.presets import build_preset
from tunelab.safe_load import read_safetensors_metadata

SD15_CONFIG = Path(__file__).parents[2] / "src" / "tunelab" / "models" / "configs" / "sd15"
PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")


@pytest.fixture(scope="module")
def tiny_sd():
    return build_preset("tiny-sd", seed=0)


def test_tiny_export_uses_original_names(tiny_sd):
    state = pipeline_to_original_state_dict(tiny_sd)

    assert all(name.startswith(PREFIXES) for name in state)
    component_sizes = [len(tiny_sd.unet.state_dict()), len(tiny_sd.vae.state_dict()), len(tiny_sd.text_encoder.state_dict())]
    assert [sum(name.startswith(prefix) for name in state) for prefix in PREFIXES] == component_sizes
    # tiny-sd: 2 levels, 1 layer each; level 0 has cross-attention, its up counterpart is level 1.
    expected_shapes = {
        "model.diffusion_model.input_blocks.0.0.weight": (16, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (16, 16, 1, 1),
        "model.diffusion_model.input_blocks.2.0.op.weight": (16, 16, 3, 3),
        "model.diffusion_model.input_blocks.3.0.skip_connection.weight": (32, 16, 1, 1),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (32, 32),
        "model.diffusion_model.output_blocks.1.1.conv.weight": (32, 32, 3, 3),
        "model.diffusion_model.output_blocks.3.1.proj_out.weight": (16, 16, 1, 1),
        "model.diffusion_model.out.2.weight": (4, 16, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (32, 32, 1, 1),
        "first_stage_model.decoder.mid.attn_1.proj_out.weight": (32, 32, 1, 1),
        "first_stage_model.decoder.up.1.upsample.conv.weight": (32, 32, 3, 3),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (16, 32, 1, 1),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (len(tiny_sd.tokenizer), 32),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (32,),
    }
    assert {name: tuple(state[name].shape) for name in expected_shapes} == expected_shapes


def test_real_sd15_structure_maps_to_the_original_names():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):  # real SD 1.5 structure, no memory or init cost
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG / "text_encoder"))

    unet_state, vae_state = unet_to_original(unet), vae_to_original(vae)
    text_state = sd1_text_encoder_to_original(text_encoder)

    # The key counts and names of the released v1-5 checkpoint (text encoder without position_ids).
    assert (len(unet_state), len(vae_state), len(text_state)) == (686, 248, 196)
    assert tuple(unet_state["output_blocks.2.1.conv.weight"].shape) == (1280, 1280, 3, 3)
    assert tuple(unet_state["output_blocks.8.2.conv.weight"].shape) == (640, 640, 3, 3)
    assert tuple(unet_state["input_blocks.9.0.op.weight"].shape) == (1280, 1280, 3, 3)
    assert tuple(unet_state["output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight"].shape) == (320, 768)
    assert tuple(vae_state["decoder.up.3.upsample.conv.weight"].shape) == (512, 512, 3, 3)
    assert tuple(vae_state["decoder.up.1.block.0.nin_shortcut.weight"].shape) == (256, 512, 1, 1)
    assert "encoder.down.3.downsample.conv.weight" not in vae_state
    assert "encoder.layers.11.mlp.fc2.weight" in text_state

    # diffusers' own loader maps every name back onto the full model.
    full = {"model.diffusion_model." + name: tensor for name, tensor in unet_state.items()}
    full.update({"first_stage_model." + name: tensor for name, tensor in vae_state.items()})
    assert convert_ldm_unet_checkpoint(full, unet.config).keys() == unet.state_dict().keys()
    assert convert_ldm_vae_checkpoint(full, vae.config).keys() == vae.state_dict().keys()


def test_save_single_file_writes_dtype_and_metadata(tiny_sd, tmp_path):
    path = save_single_file(tiny_sd, tmp_path / "out" / "tiny.safetensors", dtype=torch.bfloat16, metadata={"trigger": "sks"})

    assert list((tmp_path / "out").iterdir()) == [path]  # no temporary file left behind
    assert read_safetensors_metadata(path) == {"format": "pt", "trigger": "sks"}
    with safe_open(str(path), framework="pt") as reader:
        assert {reader.get_slice(name).get_dtype() for name in reader.keys()} == {"BF16"}


def test_export_refuses_what_it_cannot_write(tiny_sd, tmp_path):
    with pytest.raises(TunelabError, match="written as .safetensors"):
        save_single_file(tiny_sd, tmp_path / "tiny.ckpt")
    with pytest.raises(TunelabError, match="cannot save in torch.int8"):
        save_single_file(tiny_sd, tmp_path / "tiny.safetensors", dtype=torch.int8)
    with pytest.raises(TunelabError, match="metadata must map strings to strings"):
        save_single_file(tiny_sd, tmp_path / "tiny.safetensors", metadata={"steps": 500})
    assert not list(tmp_path.iterdir())


def test_export_refuses_sd2_style_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    open_clip_like = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, hidden_act="gelu"))

    with pytest.raises(TunelabError, match="only SD 1.x-style pipelines"):
        sd1_text_encoder_to_original(open_clip_like)
