"""`tunelab generate`: samplers by name, seeds, and the parameters recorded in each PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run_cli
from tunelab.generation.png_info import read_record
from tunelab.generation.samplers import SAMPLERS, make_scheduler
from tunelab.models.presets import build_preset


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_named_sampler_samples(name):
    pipeline = build_preset("tiny-sd")
    pipeline.scheduler = make_scheduler(name, pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline("a red circle", num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_karras_and_sde_variants_are_what_their_names_say():
    config = build_preset("tiny-sd").scheduler.config
    scheduler = make_scheduler("dpm++_2m_sde_karras", config)
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert scheduler.config.algorithm_type == "sde-dpmsolver++" and scheduler.config.use_karras_sigmas
    assert not make_scheduler("dpm++_2m", config).config.use_karras_sigmas
    assert make_scheduler("euler_a", config).config.prediction_type == config.prediction_type


def test_count_uses_consecutive_seeds_and_records_parameters(tmp_path):
    args = ["generate", "--model", "tiny-sd", "--prompt", "a photo of sks toy", "--negative-prompt", "blurry",
            "--steps", "4", "--sampler", "euler_a", "--seed", "10"]
    assert run_cli(*args, "--count", "3", "--out", tmp_path / "many") == 0
    files = sorted((tmp_path / "many").iterdir())
    assert [f.name for f in files] == ["000-10.png", "001-11.png", "002-12.png"]
    assert run_cli(*args[:-1], "11", "--out", tmp_path / "single.png") == 0
    assert np.array_equal(np.asarray(Image.open(files[1])), np.asarray(Image.open(tmp_path / "single.png")))

    record = read_record(files[2])
    assert record["seed"] == 12 and record["sampler"] == "euler_a" and record["steps"] == 4
    assert record["width"] == record["height"] == 32  # the model's native size
    parameters = Image.open(files[2]).text["parameters"]
    assert parameters.splitlines()[0] == "a photo of sks toy"
    assert parameters.splitlines()[1] == "Negative prompt: blurry"
    assert "Steps: 4, Sampler: euler_a, CFG scale: 7.0, Seed: 12, Size: 32x32" in parameters
    json.dumps(record)


def test_generate_matches_plain_diffusers_call(tmp_path):
    from diffusers import DDIMScheduler

    assert run_cli("generate", "--model", "tiny-sd", "--prompt", "a blue star", "--steps", "5", "--sampler", "ddim",
                   "--guidance", "3", "--seed", "4", "--width", "48", "--height", "32", "--out", tmp_path / "x.png") == 0
    pipeline = build_preset("tiny-sd")
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    expected = pipeline("a blue star", num_inference_steps=5, guidance_scale=3, width=48, height=32,
                        generator=torch.Generator().manual_seed(4)).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "x.png")), np.asarray(expected))


def test_explicit_seeds_make_one_image_each(tmp_path):
    args = ["generate", "--model", "tiny-sd", "--prompt", "a red circle", "--steps", "3", "--sampler", "euler"]
    assert run_cli(*args, "--seeds", "7", "3", "--out", tmp_path / "listed") == 0
    files = sorted((tmp_path / "listed").iterdir())
    assert [f.name for f in files] == ["000-7.png", "001-3.png"]
    assert run_cli(*args, "--seed", "3", "--out", tmp_path / "three.png") == 0
    assert np.array_equal(np.asarray(Image.open(files[1])), np.asarray(Image.open(tmp_path / "three.png")))
    assert read_record(files[0])["seed"] == 7
