"""Caption shuffling, kept tokens, tag dropout and caption files with another extension (kohya's options)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from helpers import run_cli, write_subject_images
from tunelab.methods.lora import LoraMethod, LoraOptions
from tunelab.models.sd import StableDiffusionFamily
from tunelab.training.loop import train
from tunelab.training.options import TrainOptions
from tunelab.training.step import sample_generators, shuffle_tags

TAGS = "sks toy, red, round, studio light, close-up, blue background, soft shadow"


def test_shuffling_is_seeded_and_never_moves_the_kept_tokens():
    captions = [TAGS] * 64

    def shuffled(seed, keep, dropout=0.0):
        return shuffle_tags(captions, keep, dropout, True, sample_generators(seed, 0, range(64), stream=3))

    first, again, other = shuffled(1, 2), shuffled(1, 2), shuffled(2, 2)
    assert first == again and first != other
    tags = [tag.strip() for tag in TAGS.split(",")]
    for caption in first:
        parts = caption.split(", ")
        assert parts[:2] == tags[:2] and sorted(parts[2:]) == sorted(tags[2:])
    assert len({caption for caption in first}) > 10  # the order really changes from sample to sample
    dropped = shuffled(1, 1, dropout=0.5)
    kept_counts = [len(caption.split(", ")) for caption in dropped]
    assert all(caption.startswith("sks toy") for caption in dropped)
    assert min(kept_counts) >= 1 and sum(kept_counts) / len(kept_counts) == pytest.approx(1 + 6 * 0.5, abs=0.6)


def test_a_run_sees_shuffled_captions_from_the_files_extension(tmp_path, monkeypatch):
    images = write_subject_images(tmp_path / "images")
    for path in images.glob("*.png"):
        path.with_suffix(".caption").write_text(TAGS)
    seen = []
    original = StableDiffusionFamily.encode_prompts
    monkeypatch.setattr(StableDiffusionFamily, "encode_prompts", lambda self, captions: seen.append(list(captions)) or original(self, captions))
    options = TrainOptions(model="tiny-sd", images=str(images), out=str(tmp_path / "a"), steps=4, log_with="none",
                           caption_extension=".caption", shuffle_caption=True, keep_tokens=1)
    train(options, LoraMethod(LoraOptions()), {})
    first, seen[:] = list(seen), []
    train(replace(options, out=str(tmp_path / "b")), LoraMethod(LoraOptions()), {})
    assert first == seen and all(caption.startswith("sks toy, ") for batch in first for caption in batch)
    assert len({caption for batch in first for caption in batch}) > 1


def test_bad_caption_options_are_one_line(subject_images, tmp_path, capsys):
    for flags, message in ((["--caption-tag-dropout", "1"], "--caption-tag-dropout must be"),
                           (["--keep-tokens", "-1"], "--keep-tokens must be"),
                           (["--caption-extension", "txt"], "--caption-extension must look like .txt")):
        assert run_cli("train", "lora", "--model", "tiny-sd", "--images", subject_images, "--out", tmp_path / "o", *flags) == 2
        assert message in capsys.readouterr().err
