"""Every option error of `tunelab train` is reported before any model loads (so in the first second,
not after class images were generated), as one line and exit 2."""

from __future__ import annotations

import time

import pytest

import tunelab.training.loop
from helpers import run_cli

BAD_RUNS = [
    (["lora", "--model", "tiny-sd", "--caption-dropout", "2", "--class-prompt", "a toy"],
     "--caption-dropout must be at least 0 and below 1"),
    (["lora", "--model", "tiny-sd", "--steps", "0"], "--steps must be at least 1"),
    (["lora", "--model", "tiny-sd", "--rank", "0"], "--rank must be at least 1"),
    (["lora", "--model", "tiny-sd", "--flow-shift", "3"], "--flow-shift applies to flow-matching models (Flux.1, SD3)"),
    (["lora", "--model", "tiny-sdxl", "--timestep-sampling", "uniform"], "--timestep-sampling applies to flow-matching models"),
    (["lora", "--model", "tiny-flux", "--flow-shift", "-1"], "--flow-shift must be positive"),
    (["lora", "--model", "tiny-flux", "--min-snr-gamma", "5"], "Flux.1 is trained with flow matching"),
    (["lora", "--model", "tiny-sd", "--class-images", "x"], "--class-images needs --class-prompt"),
    (["textual_inversion", "--model", "tiny-sd", "--token", "<Toy>", "--init-word", "toy"], "--token must be lower case"),
    (["hypernetwork", "--model", "tiny-flux"], "Hypernetwork is not supported on Flux.1 models (supported there: LoRA)"),
    (["lora", "--model", "tiny-sd", "--resolution", "0"], "--resolution must be a positive multiple of 8 pixels"),
    (["lora", "--model", "tiny-sd", "--resolution", "33"], "--resolution must be a positive multiple of 8 pixels, got 33"),
    (["lora", "--model", "tiny-sd", "--batch-size", "0"], "--batch-size and --gradient-accumulation must be at least 1"),
    (["lora", "--model", "tiny-sd", "--alpha=-4"], "--alpha must be a positive number"),
    (["lora", "--model", "tiny-sd", "--alpha", "nan"], "option 'alpha' must be a finite number, got nan"),
    (["lora", "--model", "tiny-sd", "--checkpoint-every", "-1"], "--checkpoint-every must be 0 or more"),
    (["lora", "--model", "tiny-sd", "--keep-last", "-2"], "--keep-last must be 0 or more"),
    (["lora", "--model", "tiny-sd", "--learning-rate", "nan"], "option 'learning_rate' must be a finite number, got nan"),
    (["lora", "--model", "tiny-sd", "--learning-rate=-1e-4"], "--learning-rate must be a positive number"),
    (["lora", "--model", "tiny-sd", "--max-grad-norm", "-1"], "--max-grad-norm must be a number of 0 or more"),
    (["lora", "--model", "tiny-sd", "--noise-offset", "inf"], "option 'noise_offset' must be a finite number, got inf"),
]


@pytest.mark.parametrize("arguments,message", BAD_RUNS)
def test_option_errors_come_before_any_model_loads(arguments, message, subject_images, tmp_path, capsys, monkeypatch):
    loaded = []
    monkeypatch.setattr(tunelab.training.loop, "load_pipeline", lambda *args, **kwargs: loaded.append(args))
    started = time.perf_counter()
    code = run_cli("train", *arguments, "--images", subject_images, "--out", tmp_path / "out")
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not loaded and not (tmp_path / "out").exists()
    assert seconds < 5  # no model, no class images: nothing slow ran (a generous bound for a busy machine)
