"""A stopped run keeps its last checkpoint, and a resumed run is the run it would have been."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from tunelab.errors import TunelabError
from tunelab.methods.dreambooth import DreamBoothMethod, DreamBoothOptions
from tunelab.methods.lora import LoraMethod, LoraOptions
from tunelab.training import step as train_step
from tunelab.training.checkpoints import complete_checkpoints, resolve_resume
from tunelab.training.loop import train
from tunelab.training.options import TrainOptions
from tunelab.training.stopping import TrainingInterrupted


def options_for(out, images, **overrides) -> TrainOptions:
    # 4 images, batch 1: an epoch is 4 steps. Dropout, a cosine schedule with warm-up and
    # flips make every piece of state matter.
    base = TrainOptions(model="tiny-sd", images=str(images), out=str(out), prompt="a photo of sks toy", steps=10,
                        learning_rate=5e-3, log_with="none", lr_scheduler="cosine", lr_warmup_steps=2,
                        random_flip=True, checkpoint_every=1)
    return replace(base, **overrides)


def record_losses(monkeypatch) -> list[float]:
    losses = []
    original = train_step.diffusion_losses
    monkeypatch.setattr(train_step, "diffusion_losses", lambda *a: (lambda r: losses.append(r[0].item()) or r)(original(*a)))
    return losses


def lora():
    return LoraMethod(LoraOptions(dropout=0.1))


def stop_by_sigterm_at(monkeypatch, stop_step):
    original = LoraMethod.after_step

    def after_step(self, step):
        original(self, step)
        if step == stop_step:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(LoraMethod, "after_step", after_step)
    return lambda: monkeypatch.setattr(LoraMethod, "after_step", original)


@pytest.mark.parametrize("stop_at", [2, 6])  # mid-epoch in the first epoch, and in a later epoch
def test_resume_after_a_stop_is_bit_identical(tmp_path, subject_images, monkeypatch, stop_at):
    losses = record_losses(monkeypatch)
    straight = load_file(train(options_for(tmp_path / "straight", subject_images), lora(), {}))
    straight_losses = list(losses)

    losses.clear()
    out = tmp_path / "resumed"
    undo = stop_by_sigterm_at(monkeypatch, stop_at)
    with pytest.raises(TrainingInterrupted):
        train(options_for(out, subject_images), lora(), {})
    undo()
    resumed = load_file(train(options_for(out, subject_images, resume="latest"), lora(), {}))
    assert losses == straight_losses  # every step's loss, bit for bit
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_larger_steps_continues_the_run(tmp_path, subject_images, monkeypatch):
    # With a schedule that does not depend on the total (constant), k steps then more is N steps.
    losses = record_losses(monkeypatch)
    options = dict(lr_scheduler="constant", lr_warmup_steps=0)
    straight = load_file(train(options_for(tmp_path / "straight", subject_images, **options), lora(), {}))
    straight_losses = list(losses)
    losses.clear()
    out = tmp_path / "continued"
    train(options_for(out, subject_images, steps=6, **options), lora(), {})
    continued = load_file(train(options_for(out, subject_images, resume="latest", **options), lora(), {}))
    assert losses == straight_losses
    assert all(torch.equal(straight[k], continued[k]) for k in straight)


def test_dreambooth_resume_with_ema_is_bit_identical(tmp_path, subject_images):
    def method():
        return DreamBoothMethod(DreamBoothOptions())

    options = dict(steps=5, random_flip=False, lr_scheduler="constant", lr_warmup_steps=0, ema=True, ema_decay=0.9)
    straight_folder = train(options_for(tmp_path / "a", subject_images, **options), method(), {})
    train(options_for(tmp_path / "b", subject_images, **{**options, "steps": 3}), method(), {})
    resumed_folder = train(options_for(tmp_path / "b", subject_images, **options, resume="latest"), method(), {})
    weights = [load_file(folder / "unet" / "diffusion_pytorch_model.safetensors") for folder in (straight_folder, resumed_folder)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_sigterm_during_a_step_saves_a_checkpoint_and_resume_finishes_the_run(tmp_path, subject_images, monkeypatch):
    straight = load_file(train(options_for(tmp_path / "straight", subject_images, checkpoint_every=0), lora(), {}))

    undo = stop_by_sigterm_at(monkeypatch, 3)
    out = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at step 3.*--resume latest"):
        train(options_for(out, subject_images, checkpoint_every=0), lora(), {})
    assert [p.name for p in complete_checkpoints(out)] == ["step-0000003"]
    undo()
    resumed = load_file(train(options_for(out, subject_images, checkpoint_every=0, resume="latest"), lora(), {}))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_sigterm_during_sampling_stops_the_sampler_quickly(tmp_path, subject_images, monkeypatch):
    from diffusers import StableDiffusionPipeline

    calls = []
    original = StableDiffusionPipeline.__call__
    def sampling_with_signal(self, *args, **kwargs):
        callback = kwargs["callback_on_step_end"]
        def on_step(pipeline, step, timestep, callback_kwargs):
            calls.append(step)
            if step == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return callback(pipeline, step, timestep, callback_kwargs)
        return original(self, *args, **{**kwargs, "callback_on_step_end": on_step})
    monkeypatch.setattr(StableDiffusionPipeline, "__call__", sampling_with_signal)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="at step 2"):
        train(options_for(out, subject_images, checkpoint_every=0, sample_every=2, sample_steps=50), lora(), {})
    assert len(calls) == 2  # the sampler stopped after the step on which the signal came, not after 50
    assert [p.name for p in complete_checkpoints(out)] == ["step-0000002"]


KILL_DURING_SAVE = textwrap.dedent('''
    import os, signal, sys
    from tunelab.training import loop
    from tunelab.training.loop import train
    from tunelab.training.options import TrainOptions
    from tunelab.methods.lora import LoraMethod, LoraOptions

    original = loop.save_training_state
    def save_then_die_at_step_3(folder, *args, **kwargs):
        progress = args[3]  # (optimizer, lr_scheduler, scaler, progress, method)
        if progress.step == 3:
            (folder / "params.safetensors").write_bytes(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)
        return original(folder, *args, **kwargs)
    loop.save_training_state = save_then_die_at_step_3  # the name the loop saves checkpoints with
    options = TrainOptions(model="tiny-sd", images=sys.argv[1], out=sys.argv[2], prompt="a photo of sks toy", steps=6,
                           log_with="none", checkpoint_every=1, keep_last=1)
    train(options, LoraMethod(LoraOptions()), {})
''')


def test_sigkill_in_the_middle_of_a_save_keeps_the_previous_checkpoint(tmp_path, subject_images):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(subject_images), str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL
    assert [p.name for p in complete_checkpoints(out)] == ["step-0000002"]  # kept: step 3 never completed
    assert (out / "checkpoints" / ".step-0000003.tmp").is_dir()
    assert resolve_resume("latest", out).name == "step-0000002"
    artifact = train(TrainOptions(model="tiny-sd", images=str(subject_images), out=str(out), prompt="a photo of sks toy",
                                  steps=6, log_with="none", checkpoint_every=1, keep_last=1, resume="latest"),
                     LoraMethod(LoraOptions()), {})
    assert artifact.is_file() and [p.name for p in complete_checkpoints(out)] == ["step-0000006"]


def test_a_nan_step_is_skipped_and_repeated_nans_stop_the_run(tmp_path, subject_images, monkeypatch):
    from tunelab.models.sd import StableDiffusionFamily

    original = StableDiffusionFamily.predict
    calls = []
    def nan_on_some_calls(self, *args):
        calls.append(1)
        prediction = original(self, *args)
        return prediction * float("nan") if len(calls) in nan_calls else prediction
    monkeypatch.setattr(StableDiffusionFamily, "predict", nan_on_some_calls)

    nan_calls = {2}
    artifact = train(options_for(tmp_path / "one", subject_images, steps=4, checkpoint_every=0), lora(), {})
    assert len(calls) == 5  # 4 steps made, one more micro-batch for the skipped one
    assert all(torch.isfinite(t).all() for t in load_file(artifact).values())

    calls.clear()
    nan_calls = set(range(3, 100))
    with pytest.raises(TunelabError, match="3 steps in a row had NaN/inf loss or gradients; stopped at step 2"):
        train(options_for(tmp_path / "many", subject_images, steps=10, max_nonfinite_steps=3), lora(), {})
    # Checkpoints hold only finite weights: the bad steps were never applied.
    for folder in complete_checkpoints(tmp_path / "many"):
        assert all(torch.isfinite(t).all() for t in load_file(folder / "params.safetensors").values())


def test_resume_from_a_folder_that_is_not_a_checkpoint_is_a_clear_error(tmp_path, subject_images):
    (tmp_path / "half").mkdir()
    with pytest.raises(TunelabError, match="not a complete tunelab checkpoint"):
        train(options_for(tmp_path / "run", subject_images, resume=str(tmp_path / "half")), lora(), {})
