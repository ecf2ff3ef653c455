"""Two training processes (accelerate, gloo on the CPU) reach what one process reaches with the same global batch."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from tunelab.methods.lora import LoraMethod, LoraOptions
from tunelab.training.checkpoints import complete_checkpoints
from tunelab.training.loop import train
from tunelab.training.options import TrainOptions

COMMON = dict(model="tiny-sd", prompt="a photo of sks toy", steps=3, learning_rate=1e-3, log_with="none")


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, subject_images):
    single = train(TrainOptions(images=str(subject_images), out=str(tmp_path / "one"), batch_size=2, **COMMON),
                   LoraMethod(LoraOptions()), {})
    result = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "train", "lora", "--model", "tiny-sd", "--images", str(subject_images),
         "--prompt", COMMON["prompt"], "--out", str(tmp_path / "two"), "--steps", "3", "--learning-rate", "1e-3",
         "--log-with", "none", "--batch-size", "1", "--num-processes", "2", "--checkpoint-every", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("saved ") == 1  # one process writes the artifact
    expected, got = load_file(single), load_file(tmp_path / "two" / "lora.safetensors")
    assert set(expected) == set(got)
    trained = max(expected[k].abs().max().item() for k in expected if "lora_up" in k)
    assert trained > 1e-4
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=trained * 1e-3, rtol=1e-3)
    # Checkpoints written once each, complete, nothing half-written left behind.
    assert [p.name for p in complete_checkpoints(tmp_path / "two")] == ["step-0000001", "step-0000002", "step-0000003"]
    assert not [p for p in (tmp_path / "two" / "checkpoints").iterdir() if p.name.startswith(".")]


def start_long_two_process_run(out, images) -> subprocess.Popen:
    """A 2-process run with no end in sight, returned once its first checkpoint shows it is training."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli", "train", "lora", "--model", "tiny-sd", "--images", str(images),
         "--prompt", COMMON["prompt"], "--out", str(out), "--steps", "100000", "--log-with", "none",
         "--num-processes", "2", "--checkpoint-every", "5", "--keep-last", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 300
    while not complete_checkpoints(out) and time.time() < deadline:
        time.sleep(0.5)
    return process


def test_sigterm_stops_every_process_at_the_same_step_with_one_checkpoint(tmp_path, subject_images):
    out = tmp_path / "run"
    process = start_long_two_process_run(out, subject_images)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    stopped_at = {int(step) for step in re.findall(r"stopped by SIGTERM at step (\d+)", stderr)}
    assert len(stopped_at) == 1  # the processes that report it agree on the step
    step = stopped_at.pop()
    assert "--resume latest" in stderr
    last = complete_checkpoints(out)[-1]
    assert last.name == f"step-{step:07d}" and (last / "params.safetensors").is_file()
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_signal_to_one_process_stops_all_of_them_at_the_same_step(tmp_path, subject_images):
    from tunelab.training.launch import _children

    out = tmp_path / "run"
    process = start_long_two_process_run(out, subject_images)
    launcher = _children(process.pid)[0]
    workers = _children(launcher)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGTERM)  # only the second process hears it
    _, stderr = process.communicate(timeout=120)
    steps = {int(s) for s in re.findall(r"stopped by .*? at step (\d+)", stderr)}
    assert len(re.findall(r"stopped by .*? at step", stderr)) == 2 and len(steps) == 1, stderr[-3000:]
    assert "a stop request to another process" in stderr
    assert complete_checkpoints(out)[-1].name == f"step-{steps.pop():07d}"
