"""DreamBench's CLIP-I, CLIP-T and DINO: exact on constructed inputs, end to end on tiny random CLIP/DINO models."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from helpers import run_cli
from PIL import Image, ImageDraw
from tiny_embedders import save_tiny_clip, save_tiny_dino_vit, save_tiny_dinov2
from transformers import CLIPModel, CLIPProcessor

import tunelab
from tunelab.evaluate.dreambench import mean_distinct_pair_cosine, mean_matched_cosine, mean_pairwise_cosine
from tunelab.evaluate.dreambench_prompts import LIVE_SUBJECT_PROMPTS, OBJECT_PROMPTS, prompt_set_for_class, subject_prompts

PROMPTS = ("a sks dog on the beach", "a red sks dog", "a sks dog in the snow")


def _picture(index: int) -> Image.Image:
    image = Image.new("RGB", (48, 40), (40 * index, 120, 220 - 50 * index))
    ImageDraw.Draw(image).rectangle((4 + 3 * index, 6, 30, 30), fill=(230, 30 * index, 20))
    return image


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedders")
    return {"clip": save_tiny_clip(root / "clip"), "dinov2": save_tiny_dinov2(root / "dinov2"),
            "vit": save_tiny_dino_vit(root / "dino-vit")}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """generated/: three different images, each with its prompt in a .txt; reference/: two others."""
    root = tmp_path_factory.mktemp("images")
    (root / "generated").mkdir()
    (root / "reference").mkdir()
    for index, prompt in enumerate(PROMPTS):
        _picture(index).save(root / "generated" / f"img_{index}.png")
        (root / "generated" / f"img_{index}.txt").write_text(prompt + "\n")
    for index in (3, 4):
        _picture(index).save(root / "reference" / f"real_{index}.jpg", quality=95)
    return root


def test_hand_computed_cosines():
    generated = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    reference = torch.tensor([[3.0, 4.0], [-2.0, 0.0]])  # cosines: 0.6, -1 with row 0; 0.8, 0 with row 1
    assert mean_pairwise_cosine(generated, reference) == pytest.approx((0.6 - 1.0 + 0.8 + 0.0) / 4, abs=1e-12)
    assert mean_pairwise_cosine(generated, torch.tensor([[1.0, 1.0]])) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    texts = torch.tensor([[3.0, 4.0], [0.0, -5.0]])  # matched cosines 0.6 and -1
    assert mean_matched_cosine(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), texts) == pytest.approx(-0.2, abs=1e-12)
    # Real images against each other: the pairs of different rows, cosines 0, 1/sqrt(2) and 1/sqrt(2), each twice.
    assert mean_distinct_pair_cosine(torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]])) == pytest.approx(math.sqrt(2) / 3, abs=1e-12)
    assert mean_distinct_pair_cosine(torch.tensor([[1.0, 0.0]])) is None


def test_identical_images_score_one(models, tmp_path):
    for name in ("generated", "reference"):
        (tmp_path / name).mkdir()
    for index in range(2):
        _picture(1).save(tmp_path / "generated" / f"copy_{index}.png")
    _picture(1).save(tmp_path / "reference" / "original.png")
    for dino in (models["dinov2"], models["vit"]):
        record = tunelab.evaluate(images=tmp_path / "generated", reference=tmp_path / "reference", prompt="a sks dog",
                                  clip=models["clip"], dino=dino)
        assert record["clip_i"] == pytest.approx(1.0, abs=1e-6) and record["dino"] == pytest.approx(1.0, abs=1e-6)
    _picture(1).save(tmp_path / "reference" / "again.png")
    same = tunelab.evaluate(images=tmp_path / "generated", reference=tmp_path / "reference", dino=models["dinov2"])
    assert same["dino"] == pytest.approx(1.0, abs=1e-6) and same["details"]["dino"]["real_images"] == pytest.approx(1.0, abs=1e-6)
    _picture(4).save(tmp_path / "reference" / "other.png")
    mixed = tunelab.evaluate(images=tmp_path / "generated", reference=tmp_path / "reference", dino=models["dinov2"])
    assert mixed["dino"] < 0.999 and mixed["details"]["dino"]["real_images"] < 0.999  # a different image lowers both


def test_clip_t_is_clips_own_logit_over_its_scale(models, folders):
    record = tunelab.evaluate(images=folders / "generated", reference=folders / "reference", clip=models["clip"])
    model, processor = CLIPModel.from_pretrained(models["clip"]).eval(), CLIPProcessor.from_pretrained(models["clip"])
    images = [Image.open(folders / "generated" / f"img_{index}.png").convert("RGB") for index in range(len(PROMPTS))]
    with torch.no_grad():
        output = model(**processor(text=list(PROMPTS), images=images, return_tensors="pt", padding=True))
        expected = float((output.logits_per_image.diagonal() / model.logit_scale.exp()).mean())  # (N, N) -> own prompt
        shuffled = float((output.logits_per_image.roll(1, dims=1).diagonal() / model.logit_scale.exp()).mean())
    assert record["clip_t"] == pytest.approx(expected, abs=1e-6)
    assert abs(expected - shuffled) > 1e-4  # the pairing matters, so the test tells the own prompt from another


def test_the_command_writes_json_and_a_table(models, folders, tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert run_cli("evaluate", "--images", folders / "generated", "--reference", folders / "reference", "--clip", models["clip"],
                   "--dino", models["vit"], "--out", out) == 0
    record = json.loads(out.read_text())
    assert all(-1 <= record[key] <= 1 for key in ("clip_i", "clip_t", "dino"))
    assert record["details"]["dino"]["backbone"]["architecture"].startswith("ViTModel (2 layers x 32")
    assert record["details"]["clip_i"]["pairs"] == 6 and record["details"]["clip_t"]["generated"] == 3
    table = capsys.readouterr().out
    assert f"{record['clip_i']:.4f}" in table and f"{record['dino']:.4f}" in table and "CLIP ViT (2 layers x 32" in table
    assert f"{record['details']['dino']['real_images']:.4f}" in table  # the two reference images against each other

    assert run_cli("evaluate", "--images", folders / "generated", "--reference", folders / "reference", "--dino",
                   models["dinov2"], "--out", out) == 0
    only_dino = json.loads(out.read_text())
    assert only_dino["clip_i"] is None and only_dino["clip_t"] is None and "Dinov2Model" in only_dino["details"]["dino"]["backbone"]["architecture"]


def test_bad_input_is_one_line_and_exit_2(models, folders, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    unprompted = tmp_path / "unprompted"
    shutil.copytree(folders / "generated", unprompted)
    (unprompted / "img_1.txt").unlink()
    generated, reference = str(folders / "generated"), str(folders / "reference")
    cases = {
        "generated images folder not found": ["--images", tmp_path / "missing", "--reference", reference, "--clip", models["clip"]],
        "no images in the reference images folder": ["--images", generated, "--reference", empty, "--clip", models["clip"]],
        "is not a CLIP model": ["--images", generated, "--reference", reference, "--clip", models["dinov2"]],
        "is not a DINO model": ["--images", generated, "--reference", reference, "--dino", models["clip"]],
        "holds no CLIP model": ["--images", generated, "--reference", reference, "--clip", empty],
        "CLIP model folder not found": ["--images", generated, "--reference", reference, "--clip", tmp_path / "nope"],
        "1 of 3 generated images have no prompt": ["--images", unprompted, "--reference", reference, "--clip", models["clip"]],
        "nothing to measure": ["--images", generated, "--reference", reference],
    }
    for message, arguments in cases.items():
        capsys.readouterr()
        assert run_cli("evaluate", *arguments) == 2, message
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, error
    # Without CLIP no prompt is needed: DINO alone scores the unprompted folder.
    assert run_cli("evaluate", "--images", unprompted, "--reference", reference, "--dino", models["dinov2"]) == 0


def test_dreambench_prompt_sets():
    assert len(OBJECT_PROMPTS) == len(LIVE_SUBJECT_PROMPTS) == 25
    assert len(set(OBJECT_PROMPTS)) == len(set(LIVE_SUBJECT_PROMPTS)) == 25
    assert OBJECT_PROMPTS[:10] == LIVE_SUBJECT_PROMPTS[:10] and OBJECT_PROMPTS[-5:] == LIVE_SUBJECT_PROMPTS[-5:]
    assert all(prompt.count("{}") == 1 for prompt in OBJECT_PROMPTS + LIVE_SUBJECT_PROMPTS)
    assert subject_prompts("dreambench_live", "sks dog")[10] == "a sks dog wearing a red hat"
    assert subject_prompts("dreambench_object", "sks teapot")[-1] == "a cube shaped sks teapot"
    assert prompt_set_for_class("dog") == "dreambench_live" and prompt_set_for_class("teapot") == "dreambench_object"
    with pytest.raises(tunelab.TunelabError, match="unknown prompt set"):
        subject_prompts("dreambench", "sks dog")
