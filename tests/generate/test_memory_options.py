"""--vae-tiling / --vae-slicing reach the VAE; --cpu-offload without CUDA is a clear error."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from helpers import run_cli
from tunelab.generation.session import GenerateOptions, prepare


def test_vae_options_are_set_and_keep_small_images_unchanged(tmp_path):
    session = prepare(GenerateOptions(model="tiny-sd", prompt="x", out=str(tmp_path), vae_tiling=True, vae_slicing=True))
    assert session.pipeline.vae.use_tiling and session.pipeline.vae.use_slicing
    args = ["generate", "--model", "tiny-sd", "--prompt", "a red car", "--steps", "3"]
    assert run_cli(*args, "--out", tmp_path / "plain.png") == 0
    assert run_cli(*args, "--vae-tiling", "--vae-slicing", "--out", tmp_path / "tiled.png") == 0
    # one image smaller than a tile: neither option may change it
    assert np.array_equal(np.asarray(Image.open(tmp_path / "plain.png")), np.asarray(Image.open(tmp_path / "tiled.png")))


def test_cpu_offload_without_cuda_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_cli("generate", "--model", "tiny-sd", "--prompt", "x", "--cpu-offload", "--out", tmp_path / "x.png") != 0
    assert "--cpu-offload needs a CUDA GPU" in capsys.readouterr().err
