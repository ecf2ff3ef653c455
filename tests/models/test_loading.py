"""Model references: preset names and diffusers folders resolve to the same pipeline."""

from __future__ import annotations

import pathlib
import shutil

import pytest
import torch

from helpers import run_cli
from tunelab.errors import TunelabError
from tunelab.models.loading import load_pipeline
from tunelab.models.presets import build_preset


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_preset_is_deterministic_per_seed_and_small():
    first, again, other = build_preset("tiny-sd"), build_preset("tiny-sd"), build_preset("tiny-sd", seed=1)
    assert _same_weights(first.unet, again.unet) and _same_weights(first.text_encoder, again.text_encoder)
    assert not _same_weights(first.unet, other.unet)
    parameters = sum(p.numel() for name in ("unet", "vae", "text_encoder") for p in getattr(first, name).parameters())
    assert 100_000 < parameters < 1_000_000


def test_tokenizer_keeps_prompt_words_whole():
    tokenizer = build_preset("tiny-sd").tokenizer
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("a photo of sks toy").input_ids)
    assert tokens == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "sks</w>", "toy</w>", "<|endoftext|>"]
    assert tokenizer("unseen words still tokenize").input_ids[-1] == tokenizer.eos_token_id


def test_diffusers_folder_loads_the_same_model(tiny_sd_folder):
    loaded = load_pipeline(tiny_sd_folder)
    preset = build_preset("tiny-sd")
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(loaded, name), getattr(preset, name))
    assert loaded.tokenizer("a photo of sks toy").input_ids == preset.tokenizer("a photo of sks toy").input_ids


def test_dtype_is_applied(tiny_sd_folder):
    assert load_pipeline("tiny-sd", torch_dtype=torch.bfloat16).unet.dtype == torch.bfloat16
    assert load_pipeline(tiny_sd_folder, torch_dtype=torch.float16).unet.dtype == torch.float16


def test_bad_references(tmp_path):
    with pytest.raises(TunelabError, match="not a preset"):
        load_pipeline("no-such-model")
    text = tmp_path / "model.txt"
    text.write_text("x")
    with pytest.raises(TunelabError, match="not a model checkpoint"):
        load_pipeline(text)


def test_a_pickled_component_of_a_diffusers_folder_is_one_line_without_torchs_advice(tiny_sd_folder, tmp_path, capsys):
    """Issue 16: a text encoder's pytorch_model.bin with Python objects ended as "internal error" with torch's advice
    to retry with weights_only=False; it is refused, naming the file, and no such advice is given."""
    folder = shutil.copytree(tiny_sd_folder, tmp_path / "model")
    (folder / "text_encoder" / "model.safetensors").unlink()
    torch.save({"weights": pathlib.Path("not a tensor")}, folder / "text_encoder" / "pytorch_model.bin")
    code = run_cli("generate", "--model", folder, "--prompt", "x", "--steps", "1", "--out", tmp_path / "x.png")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "a weights file (text_encoder/pytorch_model.bin) contains Python objects other than tensors" in err
    assert "weights_only" not in err
