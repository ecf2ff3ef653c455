"""--caption-dropout: some samples train on the empty caption, drawn per sample and reproducibly."""

import torch
from safetensors.torch import load_file

from helpers import run_cli
from tunelab.training.step import drop_captions, sample_generators


def test_the_drop_rate_is_kept_and_the_draw_is_the_samples_own():
    captions = [f"caption {i}" for i in range(400)]
    dropped = drop_captions(captions, 0.25, sample_generators(0, 0, range(400), stream=2))
    assert 0.18 < dropped.count("") / 400 < 0.32
    assert all(d in ("", c) for d, c in zip(dropped, captions))
    again = drop_captions(captions[100:200], 0.25, sample_generators(0, 0, range(100, 200), stream=2))
    assert again == dropped[100:200]  # the same sample, the same draw, whatever batch it is in
    assert drop_captions(captions, 0.0, sample_generators(0, 0, range(400), stream=2)) == captions


def train(subject_images, out, *extra):
    return run_cli("train", "lora", "--model", "tiny-sd", "--images", subject_images, "--prompt", "a photo of sks toy",
                   "--out", out, "--steps", "4", "--batch-size", "2", "--learning-rate", "5e-3", "--log-with", "none", *extra)


def test_training_with_dropout_is_reproducible_and_differs_from_without(subject_images, tmp_path, capsys):
    for name, extra in (("a", ["--caption-dropout", "0.5"]), ("b", ["--caption-dropout", "0.5"]), ("none", [])):
        assert train(subject_images, tmp_path / name, *extra) == 0
    a, b, none = (load_file(tmp_path / name / "lora.safetensors") for name in ("a", "b", "none"))
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert any(not torch.equal(a[key], none[key]) for key in a)
    assert train(subject_images, tmp_path / "bad", "--caption-dropout", "1") == 2
    assert "--caption-dropout must be at least 0 and below 1, got 1.0" in capsys.readouterr().err
