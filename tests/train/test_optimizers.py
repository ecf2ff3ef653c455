"""Every optimizer trains, resumes bit-identically and refuses arguments it does not take; schedule-free
optimizers and --ema save the weights meant for use; the added schedules follow their formulas."""

from __future__ import annotations

import inspect
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import tunelab.training.loop
from helpers import run_cli
from tunelab.methods.lora import LoraMethod, LoraOptions
from tunelab.training.loop import train
from tunelab.training.optimizers import OPTIMIZERS
from tunelab.training.options import TrainOptions
from tunelab.training.step import make_lr_scheduler

ON_THIS_MACHINE = [name for name, choice in OPTIMIZERS.items() if not choice.needs_cuda or torch.cuda.is_available()]


def options_for(out, images, **overrides) -> TrainOptions:
    base = TrainOptions(model="tiny-sd", images=str(images), out=str(out), prompt="a photo of sks toy", steps=4,
                        log_with="none", checkpoint_every=2, random_flip=True)
    return replace(base, **overrides)


def lora_tensors(path) -> dict[str, torch.Tensor]:
    return load_file(path)


@pytest.mark.parametrize("name", ON_THIS_MACHINE)
def test_each_optimizer_trains_and_resumes_bit_identically(name, subject_images, tmp_path):
    straight = train(options_for(tmp_path / "straight", subject_images, optimizer=name), LoraMethod(LoraOptions()), {})
    resumed = train(options_for(tmp_path / "resumed", subject_images, optimizer=name,
                                resume=str(tmp_path / "straight" / "checkpoints" / "step-0000002")),
                    LoraMethod(LoraOptions()), {})
    a, b = lora_tensors(straight), lora_tensors(resumed)
    assert set(a) == set(b) and all(torch.equal(a[key], b[key]) for key in a)
    ups = [value for key, value in a.items() if "lora_up" in key]
    assert any(up.abs().sum() > 0 for up in ups)  # it trained: LoRA's up factors start at zero


@pytest.mark.parametrize("name", [name for name in ON_THIS_MACHINE if name != "adamw"])
def test_an_unknown_optimizer_argument_is_one_line_naming_the_valid_ones(name, subject_images, tmp_path, capsys, monkeypatch):
    loaded = []
    monkeypatch.setattr(tunelab.training.loop, "load_pipeline", lambda *args, **kwargs: loaded.append(args))
    code = run_cli("train", "lora", "--model", "tiny-sd", "--images", subject_images, "--out", tmp_path / "out",
                   "--optimizer", name, "--optimizer-args", "not_an_argument=1")
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and not loaded
    assert f"not_an_argument: not an argument of {name}" in err and "valid: " in err


def test_optimizer_args_reach_the_optimizer(subject_images, tmp_path, monkeypatch):
    seen = {}
    original = OPTIMIZERS["prodigy"].load()

    class Recording(original):
        def __init__(self, params, **arguments):
            seen.update(arguments)
            super().__init__(params, **arguments)

    Recording.__init__.__signature__ = inspect.signature(original.__init__)  # what --optimizer-args is checked against

    monkeypatch.setitem(OPTIMIZERS, "prodigy", replace(OPTIMIZERS["prodigy"], load=lambda: Recording))
    train(options_for(tmp_path / "run", subject_images, optimizer="prodigy", steps=1, optimizer_args=["d_coef=2.5"]),
          LoraMethod(LoraOptions()), {})
    assert seen["d_coef"] == 2.5 and seen["lr"] == 1.0  # its own argument, and the rate Prodigy runs at
    assert seen["safeguard_warmup"] is True and seen["use_bias_correction"] is True  # the recommended settings


def test_adamw8bit_without_a_gpu_is_refused(subject_images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_cli("train", "lora", "--model", "tiny-sd", "--images", subject_images, "--out", tmp_path / "out",
                   "--optimizer", "adamw8bit") == 2
    assert "--optimizer adamw8bit needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("overrides", [{"optimizer": "adamw_schedulefree"}, {"ema": True, "ema_decay": 0.5}])
def test_schedule_free_and_ema_save_the_weights_meant_for_use(overrides, subject_images, tmp_path):
    method = LoraMethod(LoraOptions())
    saved = lora_tensors(train(options_for(tmp_path / "run", subject_images, checkpoint_every=0, **overrides), method, {}))
    # After the run the modules hold the training sequence (schedule-free) / the latest weights (EMA); the file
    # holds the evaluation sequence / the average. Written from the modules as they are, the two differ.
    live = lora_tensors(method.save(tmp_path / "live", {}))
    assert set(saved) == set(live)
    assert any(not torch.equal(saved[key], live[key]) for key in saved if key.endswith(".lora_up.weight"))


def test_schedule_free_with_a_schedule_is_refused(subject_images, tmp_path, capsys):
    assert run_cli("train", "lora", "--model", "tiny-sd", "--images", subject_images, "--out", tmp_path / "out",
                   "--optimizer", "adamw_schedulefree", "--lr-scheduler", "cosine") == 2
    assert "needs no schedule" in capsys.readouterr().err


@pytest.mark.parametrize("scheduler, extra, expected", [
    ("cosine_with_restarts", {"lr_cycles": 2},
     lambda step, total: 0.5 * (1 + math.cos(math.pi * ((2 * step / total) % 1.0)))),
    ("polynomial", {"lr_power": 2.0}, lambda step, total: (1 - step / total) ** 2 * (1 - 1e-7 / 1.0) + 1e-7),
])
def test_added_schedules_follow_their_formulas(scheduler, extra, expected):
    options = TrainOptions(model="m", images="x", out="y", steps=20, lr_scheduler=scheduler, **extra)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = make_lr_scheduler(options, optimizer)
    rates = []
    for _ in range(options.steps):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    for step, rate in enumerate(rates):
        assert rate == pytest.approx(expected(step, options.steps), abs=1e-6)
