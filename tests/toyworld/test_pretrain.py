"""The pretraining recipe: runs end to end in a few steps and is reproducible from its seed."""

import json

import torch
from safetensors.torch import load_file

from helpers import run_cli
from tunelab.models.loading import load_pipeline

FEW_STEPS = ["--scenes", "64", "--vae-steps", "2", "--vae-batch", "4", "--steps", "2", "--batch", "4",
             "--eval-every", "2", "--eval-images", "2", "--score-images", "2"]


def test_a_few_steps_of_the_recipe_give_a_loadable_base_and_its_record(tmp_path):
    assert run_cli("toyworld", "pretrain", "--out", tmp_path / "a", *FEW_STEPS) == 0
    pipeline = load_pipeline(tmp_path / "a")
    assert pipeline.unet.config.sample_size == 8 and pipeline.vae.config.scaling_factor != 0.18215
    facts = json.loads((tmp_path / "a" / "pretraining.json").read_text())
    assert facts["recipe"]["steps"] == 2 and facts["history"][0]["step"] == 2
    assert set(facts["history"][0]) >= {"shape_accuracy", "colour_accuracy", "background_accuracy"}
    image = pipeline("a red circle", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3)
    card = (tmp_path / "a" / "README.md").read_text()
    assert "tunelab toyworld pretrain --out DIR --seed 0 --scenes 64" in card and "--steps 2" in card
    assert f"| {facts['scores']['shape_accuracy']:.2f} |" in card  # the card shows the measured scores


def test_the_same_seed_gives_the_same_weights(tmp_path):
    for name in ("a", "b"):
        assert run_cli("toyworld", "pretrain", "--out", tmp_path / name, *FEW_STEPS) == 0
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        first, second = load_file(tmp_path / "a" / part), load_file(tmp_path / "b" / part)
        assert all(torch.equal(first[key], second[key]) for key in first)
