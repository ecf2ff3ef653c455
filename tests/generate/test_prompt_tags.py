"""<lora:NAME:W> / <hypernet:NAME:W> prompt tags and the embeddings folder of --adapters-dir."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run_cli
from tunelab.errors import TunelabError
from tunelab.generation.png_info import read_record
from tunelab.generation.prompt_tags import PromptTag, extract_tags

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
