"""The single-file key table (models/original_layout.py) is the one the writer and the reader share.

A file built key by key from the table alone, and a file written by formats/sd_checkpoint.py,
must hold the same keys and tensors and read back (through models/single_file.py and diffusers'
converters) as the model they came from; the reader must recognise every layout the writer writes.
"""

import pytest
import torch
from diffusers import UNet2DConditionModel

from tunelab.formats.safetensors_io import save_tensors
from tunelab.formats.sd_checkpoint import WRITABLE_PIPELINES, pipeline_to_original_state_dict, unet_to_original
from tunelab.models.original_layout import (
    OPEN_CLIP_FUSED_PROJECTIONS,
    OPEN_CLIP_IN_PROJECTION,
    OPEN_CLIP_LAYER_PARTS,
    OPEN_CLIP_PARTS,
    OPEN_CLIP_TEXT_PROJECTION,
    TEXT_ENCODERS,
    TEXT_MODEL_LEVEL,
    UNET_CONV_IN_KEY,
    UNET_PREFIX,
    VAE_CONV_ATTENTION_WEIGHTS,
    VAE_PREFIX,
    first_cross_attention_key,
    open_clip_layer,
    original_name,
    unet_module_map,
    vae_module_map,
)
from tunelab.models.presets import build_preset
from tunelab.models.single_file import CONFIGS_DIR, checkpoint_layout, load_single_file


@pytest.fixture(scope="module", params=["tiny-sd", "tiny-sdxl"])
def tiny(request, tmp_path_factory):
    """(pipeline, its diffusers folder, the writer's file, a file built key by key from the table)."""
    pipeline = build_preset(request.param, seed=0)
    folder = tmp_path_factory.mktemp(request.param)
    pipeline.save_pretrained(folder)
    written = folder / "written.safetensors"
    save_tensors(pipeline_to_original_state_dict(pipeline), written)
    from_table = folder / "from-table.safetensors"
    save_tensors(state_dict_from_table(pipeline), from_table)
    return pipeline, folder, written, from_table


def state_dict_from_table(pipeline) -> dict[str, torch.Tensor]:
    """Every weight of the pipeline placed by walking the table, without the writer's functions."""
    sdxl = type(pipeline).__name__ == "StableDiffusionXLPipeline"
    unet_map, vae_map = unet_module_map(pipeline.unet.config, added_embeddings=sdxl), vae_module_map(pipeline.vae.config)
    state = {UNET_PREFIX + original_name(name, unet_map): tensor for name, tensor in pipeline.unet.state_dict().items()}
    for name, tensor in pipeline.vae.state_dict().items():
        key = VAE_PREFIX + original_name(name, vae_map)
        state[key] = tensor[:, :, None, None] if key.endswith(VAE_CONV_ATTENTION_WEIGHTS) else tensor  # (C, C, 1, 1) convs
    for component, place in TEXT_ENCODERS["sdxl" if sdxl else "clip"].items():
        weights = {name.removeprefix(TEXT_MODEL_LEVEL): tensor for name, tensor in getattr(pipeline, component).state_dict().items()}
        if place.naming == "clip":
            state |= {place.prefix + name: tensor for name, tensor in weights.items()}
        else:
            state |= {place.prefix + key: tensor for key, tensor in open_clip_names(weights).items()}
    return state


def open_clip_names(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = {original: weights[name] for name, original in OPEN_CLIP_PARTS.items()}
    names[OPEN_CLIP_TEXT_PROJECTION] = weights["text_projection.weight"].T
    layers = {int(name.split(".")[2]) for name in weights if name.startswith("encoder.layers.")}
    for index in layers:
        layer, block = open_clip_layer(index)
        for kind in ("weight", "bias"):
            stacked = [weights[f"{layer}self_attn.{projection}.{kind}"] for projection in OPEN_CLIP_FUSED_PROJECTIONS]
            names[f"{block}{OPEN_CLIP_IN_PROJECTION}_{kind}"] = torch.cat(stacked)  # (3 * width, ...)
            for part, original in OPEN_CLIP_LAYER_PARTS.items():
                names[f"{block}{original}.{kind}"] = weights[f"{layer}{part}.{kind}"]
    return names


def read_weights(path, folder) -> dict[str, dict[str, torch.Tensor]]:
    pipeline = load_single_file(path, config_dir=folder)
    return {name: getattr(pipeline, name).state_dict() for name in weighted_components(pipeline)}


def weighted_components(pipeline) -> list[str]:
    return ["unet", "vae", *[name for name in ("text_encoder", "text_encoder_2") if getattr(pipeline, name, None) is not None]]


def test_writer_and_table_give_the_same_keys_and_tensors(tiny):
    pipeline, _, _, _ = tiny
    written, from_table = pipeline_to_original_state_dict(pipeline), state_dict_from_table(pipeline)

    assert written.keys() == from_table.keys()
    assert all(torch.equal(written[key], from_table[key]) for key in written)


def test_both_files_read_back_as_the_model_they_came_from(tiny):
    pipeline, folder, written, from_table = tiny
    expected = {name: getattr(pipeline, name).state_dict() for name in weighted_components(pipeline)}

    for path in (written, from_table):
        read = read_weights(path, folder)
        for component, weights in expected.items():
            assert read[component].keys() == weights.keys(), (path.name, component)
            for name, tensor in weights.items():  # random weights: a misplaced key cannot match
                assert torch.equal(read[component][name], tensor), (path.name, component, name)


def test_reader_recognises_every_layout_the_writer_writes_and_its_prefixes_cover_every_key(tiny):
    pipeline, _, _, _ = tiny
    keys = pipeline_to_original_state_dict(pipeline).keys()
    layout = WRITABLE_PIPELINES[type(pipeline).__name__]

    assert checkpoint_layout(dict.fromkeys(keys)) == layout
    prefixes = [UNET_PREFIX, VAE_PREFIX, *[place.prefix for place in TEXT_ENCODERS[layout].values()]]
    assert all(any(key.startswith(prefix) for key in keys) for prefix in prefixes)
    assert all(key.startswith(tuple(prefixes)) for key in keys)


@pytest.mark.parametrize("variant, layout", [("sd15", "clip"), ("sdxl", "sdxl")])
def test_keys_the_reader_detects_a_real_model_by_are_keys_the_writer_writes(variant, layout):
    config = UNet2DConditionModel.load_config(CONFIGS_DIR / variant / "unet")
    with torch.device("meta"):  # the real structure, no memory or init cost
        unet = UNet2DConditionModel.from_config(config)
    keys = {UNET_PREFIX + name for name in unet_to_original(unet, added_embeddings=layout == "sdxl")}

    first_attention_level = next(level for level, kind in enumerate(config["down_block_types"]) if kind.startswith("CrossAttn"))
    assert UNET_CONV_IN_KEY in keys
    assert first_cross_attention_key(first_attention_level) in keys
    # ... and the one table names the same module for the writer: the level's first attention.
    module_map = unet_module_map(unet.config, added_embeddings=layout == "sdxl")
    attention = module_map[f"down_blocks.{first_attention_level}.attentions.0"]
    assert first_cross_attention_key(first_attention_level) == f"{UNET_PREFIX}{attention}.transformer_blocks.0.attn2.to_k.weight"
