"""Validation during training: fixed draws (the same loss in a straight and a resumed run, training unchanged by
validating), --validation-split, --keep-best, and options refused before any model loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunelab
from tunelab import api
from tunelab.data.dataset import build_dataset
from tunelab.data.folder import scan_image_folder
from tunelab.errors import TunelabError
from tunelab.toyworld.subjects import SUBJECTS, write_training_images
from tunelab.training.validation import held_out

# 4 images, batch 1; dropout and flips make the training's random state matter, so a validation that drew
# from it would change the run.
RUN = dict(model="tiny-sd", prompt="a photo of sks toy", steps=4, learning_rate=5e-3, log_with="none", rank=2,
           dropout=0.1, random_flip=True, checkpoint_every=2)


def points(out: Path) -> list[dict]:
    return json.loads((out / "validation.json").read_text())["points"]


VALIDATED = dict(RUN, validate_every=2, keep_best="validation_loss")


@pytest.fixture(scope="module")
def validated_runs(tmp_path_factory, subject_images):
    """A straight validated run, and a copy of the same run stopped at step 2 (each test resumes its own copy)."""
    tmp_path = tmp_path_factory.mktemp("validated")
    options = dict(VALIDATED, validation_images=str(subject_images))
    straight = tunelab.train("lora", images=subject_images, out=tmp_path / "straight", **options)
    stopped = tunelab.train("lora", images=subject_images, out=tmp_path / "stopped",
                            on_progress=lambda p: p.step == 2 and p.request_stop(), **options)
    assert stopped.stopped and [p["step"] for p in points(tmp_path / "stopped")] == [2]
    return straight, tmp_path / "stopped", options


def test_validation_loss_is_the_same_in_a_resumed_run_and_validating_changes_no_weight(tmp_path, subject_images,
                                                                                      validated_runs):
    straight, stopped, validated = validated_runs
    plain = load_file(tunelab.train("lora", images=subject_images, out=tmp_path / "plain", **RUN).artifact)
    assert all(torch.equal(plain[key], value) for key, value in load_file(straight.artifact).items())

    out = shutil.copytree(stopped, tmp_path / "resumed")
    tunelab.train("lora", images=subject_images, out=out, resume="latest", **validated)
    assert points(out) == points(straight.artifact.parent)  # every point, bit for bit (JSON keeps a float's every bit)
    losses = [p["validation_loss"] for p in points(out)]
    assert [p["step"] for p in points(out)] == [2, 4] and losses[0] != losses[1]  # the weights changed; the draws did not
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["value"] == min(losses) and best["step"] == [2, 4][losses.index(min(losses))]
    checkpoint = load_file(out / "checkpoints" / f"step-{best['step']:07d}" / "lora.safetensors")
    assert all(torch.equal(checkpoint[key], value) for key, value in load_file(out / "best" / "lora.safetensors").items())


def test_a_resume_may_validate_at_another_frequency_and_trains_the_same_weights(tmp_path, subject_images, validated_runs):
    straight, stopped, validated = validated_runs
    out = shutil.copytree(stopped, tmp_path / "resumed")
    resumed = tunelab.train("lora", images=subject_images, out=out, resume="latest", **dict(validated, validate_every=1))
    expected = load_file(straight.artifact)
    assert all(torch.equal(expected[key], value) for key, value in load_file(resumed.artifact).items())
    assert [p["step"] for p in points(out)] == [2, 3, 4]  # validated at the new frequency from the resume on
    assert [points(out)[i] for i in (0, 2)] == points(straight.artifact.parent)  # the same draws, the same weights


def test_validation_split_holds_images_out_of_training_by_the_validation_seed(subject_images):
    items = scan_image_folder(subject_images, "a toy")
    kept_out = held_out(items, 0.25, seed=0)
    assert len(kept_out) == 1 and held_out(items, 0.25, seed=0) == kept_out
    assert {item.path for seed in range(8) for item in held_out(items, 0.25, seed)} != {kept_out[0].path}  # the seed chooses
    training = build_dataset(subject_images, "a toy", 16, exclude={kept_out[0].path})
    assert len(training) == 3
    with pytest.raises(TunelabError, match="leaves no training image"):
        held_out(items[:1], 0.5, seed=0)


@pytest.mark.parametrize(("options", "message"), [
    (dict(validate_every=5), "--validate-every needs something to validate"),
    (dict(validation_split=0.2), "need --validate-every"),
    (dict(validate_every=5, validation_split=0.2, validation_images="."), "choose one"),
    (dict(validate_every=5, validation_split=1.0), "--validation-split must be"),
    (dict(validate_every=5, validation_subject="bullseye", keep_best="validation_loss"), "needs --validation-images"),
    (dict(validate_every=5, validation_split=0.2, keep_best="subject_fidelity"), "needs --validation-subject"),
    (dict(validate_every=5, validation_split=0.2, keep_best="validation_los"), "did you mean 'validation_loss'"),
    (dict(validate_every=5, validation_subject="unicorn"), "unknown toyworld subject 'unicorn'"),
])
def test_validation_options_are_refused_before_loading(tmp_path, subject_images, options, message):
    with pytest.raises(TunelabError, match=message):
        api.check_train("lora", model="tiny-sd", images=subject_images, out=tmp_path / "o", **options)


def test_keep_best_on_toyworld_keeps_the_checkpoint_of_the_best_subject_fidelity(tmp_path):
    images = write_training_images(SUBJECTS["bullseye"], tmp_path / "bullseye", captions=False)
    out = tmp_path / "run"
    tunelab.train("lora", model="toyworld", images=images, out=out, prompt="a sks circle", steps=5, batch_size=2, rank=4,
                  learning_rate=2e-2, log_with="none", checkpoint_every=1, validate_every=1, validation_subject="bullseye",
                  validation_samples=2, sample_steps=4, keep_best="subject_fidelity")
    fidelity = {p["step"]: p["subject_fidelity"] for p in points(out)}
    assert list(fidelity) == [1, 2, 3, 4, 5] and len(set(fidelity.values())) > 1
    best_step = max(fidelity, key=lambda step: (fidelity[step], -step))  # the first of the highest
    best = json.loads((out / "best" / "best.json").read_text())
    assert (best["step"], best["value"]) == (best_step, fidelity[best_step])
    kept = load_file(out / "best" / "lora.safetensors")
    at_step = load_file(out / "checkpoints" / f"step-{best_step:07d}" / "lora.safetensors")
    assert all(torch.equal(at_step[key], value) for key, value in kept.items())
    if best_step != 5:
        last = load_file(out / "lora.safetensors")
        assert not all(torch.equal(last[key], value) for key, value in kept.items())
