"""<lora:NAME:W> / <hypernet:NAME:W> prompt tags and the embeddings folder of --adapters-dir."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run_cli
from tunelab.errors import TunelabError
from tunelab.generation.png_info import read_record
from tunelab.generation.prompt_tags import PromptTag, extract_tags
from tunelab.generation.session import GenerateOptions, prepare

GENERATE = ["generate", "--model", "tiny-sd", "--steps", "4", "--seed", "2", "--sampler", "euler"]


def pixels(path):
    return np.asarray(Image.open(path))


def test_tags_are_taken_out_of_the_prompt():
    text, tags = extract_tags("a <lora:toy:0.7> photo <hypernet:ink style>, <b>bold</b>")
    assert text == "a  photo , <b>bold</b>"  # only <kind:...> tags are tags
    assert tags == [PromptTag("lora", "toy", 0.7), PromptTag("hypernet", "ink style", 1.0)]
    with pytest.raises(TunelabError, match="a weight is not a number"):
        extract_tags("<lora:toy:strong>")


def test_lora_tag_equals_lora_flag(tmp_path, trained_lora):
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    shutil.copy(trained_lora, adapters / "toy.safetensors")
    assert run_cli(*GENERATE, "--prompt", "a photo of sks toy", "--lora", f"{trained_lora}:0.7",
                   "--out", tmp_path / "flag.png") == 0
    assert run_cli(*GENERATE, "--prompt", "a photo of <lora:toy:0.7>sks toy", "--adapters-dir", adapters,
                   "--out", tmp_path / "tag.png") == 0
    assert run_cli(*GENERATE, "--prompt", "a photo of sks toy", "--out", tmp_path / "base.png") == 0
    assert np.array_equal(pixels(tmp_path / "flag.png"), pixels(tmp_path / "tag.png"))
    assert not np.array_equal(pixels(tmp_path / "flag.png"), pixels(tmp_path / "base.png"))
    record = read_record(tmp_path / "tag.png")
    assert record["loras"] == [[str(adapters / "toy.safetensors"), 0.7]]


def test_unknown_tag_names_the_name_and_folder(tmp_path, capsys):
    assert run_cli(*GENERATE, "--prompt", "x <lora:missing:1>", "--adapters-dir", tmp_path, "--out", tmp_path / "x.png") != 0
    error = capsys.readouterr().err
    assert "'missing'" in error and str(tmp_path) in error


def test_embeddings_folder_loads_tokens_by_file_stem(tmp_path):
    from tunelab.formats.embedding import Embedding, write_embedding_safetensors
    from tunelab.models.presets import build_preset

    width = build_preset("tiny-sd").text_encoder.config.hidden_size
    vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(0)) * 3
    (tmp_path / "adapters" / "embeddings").mkdir(parents=True)
    file = write_embedding_safetensors(Embedding({"text_encoder": vectors}, name="inner-name"),
                                       tmp_path / "adapters" / "embeddings" / "mytok.safetensors", {})
    assert run_cli(*GENERATE, "--prompt", "a photo of mytok", "--adapters-dir", tmp_path / "adapters",
                   "--out", tmp_path / "dir.png") == 0
    assert run_cli(*GENERATE, "--prompt", "a photo of mytok", "--embedding", f"{file}:mytok",
                   "--out", tmp_path / "flag.png") == 0
    assert run_cli(*GENERATE, "--prompt", "a photo of mytok", "--out", tmp_path / "none.png") == 0
    assert np.array_equal(pixels(tmp_path / "dir.png"), pixels(tmp_path / "flag.png"))
    assert not np.array_equal(pixels(tmp_path / "dir.png"), pixels(tmp_path / "none.png"))


@pytest.fixture(scope="module")
def adapters_with_te_lora(tmp_path_factory, subject_images):
    """A LoRA on both the text encoder and the UNet, as adapters/toy.safetensors."""
    out = tmp_path_factory.mktemp("te-lora")
    assert run_cli("train", "lora", "--model", "tiny-sd", "--images", subject_images, "--prompt", "a photo of sks toy",
                   "--out", out, "--steps", "3", "--learning-rate", "5e-2", "--rank", "2", "--train-text-encoder",
                   "--log-with", "none") == 0
    (out / "adapters").mkdir()
    shutil.copy(out / "lora.safetensors", out / "adapters" / "toy.safetensors")
    return out / "adapters"


@torch.no_grad()
def component_outputs(prompt: str, adapters) -> tuple[torch.Tensor, torch.Tensor]:
    """(text encoder output, UNet output) on fixed inputs with the prompt's tags attached."""
    session = prepare(GenerateOptions(model="tiny-sd", prompt=prompt, out="unused.png", adapters_dir=str(adapters)))
    pipeline = session.pipeline
    ids = pipeline.tokenizer("a photo", padding="max_length", return_tensors="pt").input_ids  # (1, 77)
    text = pipeline.text_encoder(ids)[0]  # (1, 77, D)
    generator = torch.Generator().manual_seed(0)
    config = pipeline.unet.config
    latents = torch.randn(1, config.in_channels, 8, 8, generator=generator)
    context = torch.randn(1, 77, config.cross_attention_dim, generator=generator)
    denoised = pipeline.unet(latents, 10, encoder_hidden_states=context).sample  # (1, C, 8, 8)
    session.detach()
    return text, denoised


def test_lora_tag_multipliers_per_component(adapters_with_te_lora):
    adapters = adapters_with_te_lora
    base_text, base_unet = component_outputs("x", adapters)
    full_text, full_unet = component_outputs("x <lora:toy:1>", adapters)
    assert not torch.equal(full_text, base_text) and not torch.equal(full_unet, base_unet)

    unet_only = component_outputs("x <lora:toy:0:1>", adapters)  # A1111: <lora:NAME:TE:UNET>
    assert torch.equal(unet_only[0], base_text) and torch.equal(unet_only[1], full_unet)
    text_only = component_outputs("x <lora:toy:unet=0:te=1>", adapters)  # named, any order
    assert torch.equal(text_only[0], full_text) and torch.equal(text_only[1], base_unet)
    both_named = component_outputs("x <lora:toy:te=0.5>", adapters)  # the UNet's defaults to the text encoder's
    half = component_outputs("x <lora:toy:0.5>", adapters)
    assert all(torch.equal(a, b) for a, b in zip(both_named, half))
    lyco = component_outputs("x <lyco:toy:0.5>", adapters)  # lyco is read as lora
    assert all(torch.equal(a, b) for a, b in zip(lyco, half))


def test_separate_multipliers_are_recorded(tmp_path, adapters_with_te_lora):
    assert run_cli(*GENERATE, "--prompt", "a photo <lora:toy:0.2:0.9>", "--adapters-dir", adapters_with_te_lora,
                   "--out", tmp_path / "split.png") == 0
    record = read_record(tmp_path / "split.png")
    assert record["loras"] == [[str(adapters_with_te_lora / "toy.safetensors"), {"te": 0.2, "unet": 0.9}]]
    assert "Lora 0: toy:0.2:0.9" in Image.open(tmp_path / "split.png").text["parameters"]


def test_unknown_tag_kinds_are_removed_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        text, tags = extract_tags("a <embedding:foo:1> cat <lyco:bar:0.5> <b>x</b>")
    assert text == "a  cat  <b>x</b>"
    assert tags == [PromptTag("lora", "bar", 0.5)]
    assert "<embedding:foo:1>" in caplog.text
    with pytest.raises(TunelabError, match="dyn argument"):
        extract_tags("<lora:toy:1:1:8>")
    with pytest.raises(TunelabError, match="names no file"):
        extract_tags("<lora::1>")


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "sub/inner", ".."])
def test_a_tag_names_a_file_in_the_adapters_folder_never_a_path(name, tmp_path, capsys):
    (tmp_path / "adapters").mkdir()
    assert run_cli("generate", "--model", "tiny-sd", "--prompt", f"a <lora:{name}:1> toy", "--adapters-dir",
                   tmp_path / "adapters", "--steps", "1", "--out", tmp_path / "x.png") == 2
    assert "give the name of a file in --adapters-dir, not a path" in capsys.readouterr().err
