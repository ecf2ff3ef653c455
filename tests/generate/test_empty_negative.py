"""No negative prompt on SDXL: the unconditional pass sees zeros where the pipeline config says
`force_zeros_for_empty_prompt`, as diffusers' pipeline does; `--empty-negative encode` is A1111's way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run_cli
from tunelab.api import options_from_png
from tunelab.generation.png_info import read_record, save_png
from tunelab.generation.samplers import make_scheduler
from tunelab.models.presets import build_preset

PROMPT = "a red circle"
SETTINGS = ["--steps", "3", "--sampler", "euler", "--guidance", "5", "--seed", "3"]


@pytest.fixture(scope="module")
def diffusers_images():
    """What diffusers' own SDXL pipeline draws for PROMPT with no negative prompt and with an empty one."""
    pipeline = build_preset("tiny-sdxl")
    assert pipeline.config.force_zeros_for_empty_prompt
    pipeline.scheduler = make_scheduler("euler", pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)

    def draw(**negative):
        image = pipeline(PROMPT, num_inference_steps=3, guidance_scale=5, generator=torch.Generator().manual_seed(3), **negative)
        return np.asarray(image.images[0])

    return {"none": draw(), "empty text": draw(negative_prompt="")}


def tunelab_image(folder, prompt: str = PROMPT, *flags: str) -> np.ndarray:
    out = folder / f"{len(list(folder.iterdir()))}.png"
    assert run_cli("generate", "--model", "tiny-sdxl", "--prompt", prompt, *SETTINGS, *flags, "--out", out) == 0
    return np.asarray(Image.open(out))


def test_sdxl_without_a_negative_prompt_matches_diffusers_and_encode_matches_the_empty_text(diffusers_images, tmp_path):
    assert not np.array_equal(diffusers_images["none"], diffusers_images["empty text"])  # the two differ on tiny-sdxl

    assert np.array_equal(tunelab_image(tmp_path), diffusers_images["none"])
    assert np.array_equal(tunelab_image(tmp_path, PROMPT, "--empty-negative", "encode"), diffusers_images["empty text"])
    # a prompt that is encoded per step (editing to the same text) takes the same zeros
    assert np.array_equal(tunelab_image(tmp_path, f"[{PROMPT}:{PROMPT}:2]"), diffusers_images["none"])


def test_zeros_can_be_asked_for_on_stable_diffusion_and_a_bad_value_is_one_line(tmp_path, capsys):
    def sd_image(*flags: str) -> np.ndarray:
        out = tmp_path / f"sd{len(flags)}.png"
        assert run_cli("generate", "--model", "tiny-sd", "--prompt", PROMPT, *SETTINGS, *flags, "--out", out) == 0
        return np.asarray(Image.open(out))

    assert not np.array_equal(sd_image(), sd_image("--empty-negative", "zeros"))
    with pytest.raises(SystemExit) as exit_info:
        run_cli("generate", "--model", "tiny-sd", "--prompt", PROMPT, "--empty-negative", "none", "--out", tmp_path / "x.png")
    assert exit_info.value.code == 2
    assert "invalid choice: 'none'" in capsys.readouterr().err


def test_a_png_recorded_before_the_option_keeps_the_empty_text(tmp_path):
    """Its image was made with the empty text encoded (prompt weighting on), so --from-png makes that again."""
    image = Image.new("RGB", (8, 8))
    record = {"prompt": PROMPT, "steps": 3, "sampler": "euler", "guidance": 5, "seed": 3, "width": 8, "height": 8,
              "model": "tiny-sdxl", "options": {"model": "tiny-sdxl", "prompt": PROMPT, "seed": 3}}
    old = save_png(image, tmp_path / "old.png", record)
    unweighted = save_png(image, tmp_path / "unweighted.png", {**record, "options": {**record["options"], "prompt_weighting": False}})
    new = save_png(image, tmp_path / "new.png", {**record, "options": {**record["options"], "empty_negative": "model"}})

    assert options_from_png(old)["empty_negative"] == "encode"
    assert options_from_png(unweighted)["empty_negative"] == "model"  # the pipeline's own handling, as then
    assert options_from_png(new)["empty_negative"] == "model" and "empty_negative" in read_record(new)["options"]
