"""Shared fixtures: tiny images made in code, a tiny-sd folder, and one trained LoRA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import run_cli, write_subject_images, write_untrained_predictor

# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spinning
# threads slow them down a hundredfold; one thread also keeps CPU results reproducible. Child
# processes inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def subject_images(tmp_path_factory) -> Path:
    return write_subject_images(tmp_path_factory.mktemp("subject"))


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory) -> Path:
    from tunelab.models.presets import build_preset

    folder = tmp_path_factory.mktemp("tiny-sd")
    build_preset("tiny-sd").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def trained_lora(tmp_path_factory, subject_images) -> Path:
    """A 20-step kohya LoRA on tiny-sd, trained once for the session through the CLI."""
    out = tmp_path_factory.mktemp("lora-run")
    code = run_cli(
        "train", "lora", "--model", "tiny-sd", "--images", subject_images, "--prompt", "a photo of sks toy",
        "--out", out, "--steps", "20", "--learning-rate", "5e-3", "--rank", "4", "--log-with", "none",
    )
    assert code == 0
    return out / "lora.safetensors"


@pytest.fixture(scope="session")
def tiny_sd_predictor(tmp_path_factory) -> Path:
    """An untrained but valid weight predictor for tiny-sd (helpers.write_untrained_predictor)."""
    return write_untrained_predictor(tmp_path_factory.mktemp("predictor") / "predictor.safetensors")


@pytest.fixture(scope="session")
def predicted_lora_tiny_options(tiny_sd_predictor) -> dict:
    """The predicted-LoRA technique's example options on the tiny presets (the contract matrix reads a fixture
    `<technique>_tiny_options` where a technique's example names a file made for another model): the tiny
    predictor, and a prompt with its token."""
    return {"hypernet": str(tiny_sd_predictor), "prompt": "a photo of sks toy"}
