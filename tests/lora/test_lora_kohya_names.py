"""kohya names back to module paths without a model: exact for the SD 1.x/2.x UNet and CLIP module names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunelab.formats.kohya_lora import kohya_name, kohya_prefixes, module_key_from_kohya_name
from tunelab.lora.modules import ADAPTABLE_TYPES, adaptable_modules
from tunelab.models.presets import build_preset

CONFIGS = Path(__file__).parents[2] / "src" / "tunelab" / "models" / "configs"


def module_keys(unet, text_encoder) -> list[str]:
    return [f"unet.{name}" for name, module in unet.named_modules() if isinstance(module, ADAPTABLE_TYPES)] + [
        f"text_encoder.{name}" for name, module in text_encoder.named_modules() if isinstance(module, ADAPTABLE_TYPES)
    ]


@pytest.mark.parametrize("variant", ["sd15", "sd21"])
def test_every_real_sd_module_name_resolves_back(variant):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):  # real structure, no memory or init cost
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS / variant / "unet"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(CONFIGS / variant / "text_encoder"))
    keys = module_keys(unet, text_encoder)
    assert len(keys) > 300
    prefixes = kohya_prefixes(["unet", "text_encoder"])
    assert [module_key_from_kohya_name(kohya_name(key, prefixes)) for key in keys] == keys


def test_tiny_sd_names_and_the_text_model_level():
    keys = list(adaptable_modules(build_preset("tiny-sd")))
    prefixes = kohya_prefixes(["unet", "text_encoder"])
    assert [module_key_from_kohya_name(kohya_name(key, prefixes)) for key in keys] == keys
    # kohya files keep CLIP's text_model level; live module paths (transformers >= 5.6) do not.
    assert module_key_from_kohya_name("lora_te_text_model_encoder_layers_11_mlp_fc2") == "text_encoder.encoder.layers.11.mlp.fc2"
    assert module_key_from_kohya_name("lora_te2_text_model_encoder_layers_0_self_attn_out_proj") == "text_encoder_2.encoder.layers.0.self_attn.out_proj"
    assert module_key_from_kohya_name("lora_vae_decoder_conv_in") is None
