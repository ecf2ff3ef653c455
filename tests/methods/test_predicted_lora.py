"""`tunelab train predicted_lora`: the LoRA a weight predictor writes from the run's images, refined by the run's steps
(none: the prediction alone), on tiny-sd with an untrained predictor made for it (conftest: tiny_sd_predictor)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from helpers import one_line_error, refuse_model_loading, run_cli
import tunelab.training.loop
from tunelab.formats.lora_io import read_lora
from tunelab.formats.lora_set import LoraSet

PROMPT = "a photo of sks toy"


def deltas(lora: LoraSet) -> dict[str, torch.Tensor]:
    """Each module's weight change, scale included: what two LoRAs of different layouts share when they agree."""
    return {key: module.scale * module.up @ module.down for key, module in lora.items()}  # (out, in)


def train_predicted(images, predictor, out, *more) -> tuple[int, object]:
    code = run_cli("train", "predicted_lora", "--model", "tiny-sd", "--hypernet", predictor, "--images", images, "--prompt", PROMPT,
                   "--out", out, "--log-with", "none", *more)
    return code, out / "lora.safetensors"


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, subject_images, tiny_sd_predictor):
    """The prediction alone, as `tunelab personalize` writes it from the same images."""
    out = tmp_path_factory.mktemp("personalized") / "lora.safetensors"
    assert run_cli("personalize", "--hypernet", tiny_sd_predictor, "--images", subject_images, "--out", out) == 0
    return read_lora(out)[0]


def test_zero_steps_save_the_prediction_as_personalize_writes_it(subject_images, tiny_sd_predictor, predicted, tmp_path):
    code, artifact = train_predicted(subject_images, tiny_sd_predictor, tmp_path / "run", "--steps", "0")
    assert code == 0
    saved = deltas(read_lora(artifact)[0])
    expected = deltas(predicted)
    assert set(expected) <= set(saved) and any(delta.abs().max() > 0 for delta in expected.values())
    for key, delta in saved.items():  # the predictor's layers as predicted; the group's others (1x1 convs) at zero
        torch.testing.assert_close(delta, expected.get(key, torch.zeros_like(delta)), rtol=1e-5, atol=1e-6)
    with safe_open(artifact, "pt") as file:
        metadata = file.metadata()
    assert metadata["tunelab_predictor_token"] == "sks" and float(metadata["tunelab_predict_seconds"]) < 1.0
    assert metadata["ss_network_dim"] == "4" and metadata["tunelab_steps"] == "0"


def test_the_steps_start_from_the_prediction(subject_images, tiny_sd_predictor, predicted, tmp_path):
    code, artifact = train_predicted(subject_images, tiny_sd_predictor, tmp_path / "run", "--steps", "2", "--learning-rate", "1e-4")
    assert code == 0
    saved, expected = deltas(read_lora(artifact)[0]), deltas(predicted)
    moved = max((saved[key] - expected[key]).abs().max().item() for key in expected)
    size = max(delta.abs().max().item() for delta in expected.values())
    assert 0 < moved < 0.1 * size  # refined a little, from the prediction (a fresh LoRA would start at zero)


@pytest.mark.parametrize("arguments,message", [
    (["--prompt", "a photo of a red toy"], "answers to its token 'sks': every caption must name it"),
    (["--steps", "-1"], "--steps must be at least 0, got -1"),
])
def test_runs_it_cannot_learn_are_refused(arguments, message, subject_images, tiny_sd_predictor, tmp_path, capsys):
    code, _ = train_predicted(subject_images, tiny_sd_predictor, tmp_path / "run", "--steps", "0", *arguments)
    assert message in one_line_error(capsys, code)


def test_captions_without_the_token_are_refused_before_class_images_are_made(subject_images, tiny_sd_predictor, tmp_path,
                                                                             capsys, monkeypatch):
    def no_sampling(*args, **kwargs):
        raise AssertionError("class images were made before the captions were checked")

    monkeypatch.setattr(tunelab.training.loop, "ensure_class_images", no_sampling)
    code, _ = train_predicted(subject_images, tiny_sd_predictor, tmp_path / "run", "--steps", "1", "--prompt", "a red toy",
                              "--class-prompt", "a toy", "--class-cache", tmp_path / "cache")
    assert "every caption must name it" in one_line_error(capsys, code)


def test_a_missing_predictor_is_refused_before_the_model_loads(subject_images, tmp_path, capsys, monkeypatch):
    refuse_model_loading(monkeypatch)
    code, _ = train_predicted(subject_images, tmp_path / "nowhere.safetensors", tmp_path / "run", "--steps", "0")
    assert "weight predictor not found" in one_line_error(capsys, code)


def test_a_predictor_made_for_another_model_is_refused(subject_images, tmp_path, capsys):
    code, _ = train_predicted(subject_images, "toyworld", tmp_path / "run", "--steps", "0")
    error = one_line_error(capsys, code)
    assert "weight predictor" in error and "does not fit this model" in error


def test_other_techniques_still_need_a_step(subject_images, tmp_path, capsys):
    code = run_cli("train", "lora", "--model", "tiny-sd", "--images", subject_images, "--prompt", PROMPT, "--out",
                   tmp_path / "run", "--steps", "0")
    assert "--steps must be at least 1, got 0" in one_line_error(capsys, code)
