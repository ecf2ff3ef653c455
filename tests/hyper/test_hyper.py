"""The weight predictor (issue 22): batched per-subject LoRAs, the pretraining run, `tunelab personalize`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
from PIL import Image

from helpers import one_line_error, run_cli
from tunelab.formats.lora_io import read_lora
from tunelab.hyper.batches import adapted_modules, basis_for
from tunelab.hyper.scoring import predict_lora, training_renders
from tunelab.hyper.stages import run_stage
from tunelab.hyper.subjects import all_subjects, held_out_subjects, training_subjects
from tunelab.lora.merging import applied, check_fits
from tunelab.lora.modules import adaptable_modules
from tunelab.lora.per_sample import per_sample_loras
from tunelab.lora.weight_predictor import load_predictor
from tunelab.methods.lora import LoraOptions
from tunelab.methods.predicted_lora import LoraFromStart
from tunelab.models.family import family_for
from tunelab.models.loading import load_pipeline
from tunelab.models.presets import build_preset
from tunelab.safe_load import load_state_dict
from tunelab.toyworld.subjects import SUBJECTS
from tunelab.toyworld.world import LATER_PATTERNS, PATTERNS, SHAPES, Look

TINY_RUN = ["--subjects", "4", "--rank", "4", "--renders", "3", "--core-steps", "3", "--core-batch", "2", "--core-items", "2", "--targets", "attention",
            "--regression-steps", "3", "--diffusion-steps", "2", "--channels", "4", "--hidden", "16", "--eval-images", "1",
            "--class-images", "2", "--score-subjects", "2", "--sample-steps", "2"]


@pytest.fixture(scope="module")
def predictor_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hyper-run")
    assert run_cli("hyper", "pretrain", "--model", "tiny-sd", "--out", out, *TINY_RUN) == 0
    return out


@pytest.fixture(scope="module")
def held_out_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("held-out-subject")
    for index, image in enumerate(training_renders(held_out_subjects()[0])):
        Image.fromarray(image).save(folder / f"{index}.png")
    return folder


def test_new_patterns_draw_two_colours_and_leave_the_autoencoders_set_alone():
    assert PATTERNS == ("solid", "rings", "quadrants", "bands")  # what the autoencoder's pretraining draws from
    for pattern in LATER_PATTERNS:
        for shape in SHAPES:
            labels = Look(shape, ("orange", "purple"), pattern).labels(16)
            assert set(np.unique(labels)) >= {0, 1}, (pattern, shape)


def test_subjects_are_new_and_the_held_out_ones_stay_apart():
    built_in = {subject.look for subject in SUBJECTS.values()}
    held_out = set(held_out_subjects())
    assert len(held_out) >= 8 and not built_in & {subject.look for subject in all_subjects()}
    for seed in (0, 1):
        chosen = training_subjects(40, seed)
        assert len(set(chosen)) == 40 and not held_out & set(chosen)
        assert all(set(s.look.colours) <= {"orange", "purple", "pink"} and s.look.pattern != "solid" for s in chosen)
    assert training_subjects(40, 0) != training_subjects(40, 1)


def test_each_batch_item_goes_through_its_own_subjects_lora():
    pipeline = build_preset("tiny-sd")
    family = family_for(pipeline)
    groups = ("attention", "feedforward")
    basis, modules = basis_for(family, 4, seed=0, groups=groups), adapted_modules(family, groups)
    cores = torch.randn(2, basis.layers, 4, 4, generator=torch.Generator().manual_seed(1)) * 0.5  # (S, L, r, r)
    noisy = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(3))
    steps = torch.tensor([10, 700])
    with torch.no_grad(), per_sample_loras(modules, basis, cores):
        batched = pipeline.unet(noisy, steps, text).sample  # (2, 4, 16, 16)
    for item in range(2):
        with torch.no_grad(), applied(modules, [(basis.lora_set(cores[item]), 1.0)]):
            alone = pipeline.unet(noisy[item : item + 1], steps[item : item + 1], text[item : item + 1]).sample
        torch.testing.assert_close(batched[item : item + 1], alone, atol=1e-5, rtol=1e-4)
    plain = pipeline.unet(noisy, steps, text).sample
    assert (batched - plain).abs().max() > 1e-3  # the hooks are gone after the block, and they did something


def test_a_resumed_stage_takes_the_same_steps(tmp_path):
    target = torch.randn(5, generator=torch.Generator().manual_seed(0))

    def train(checkpoint, stop_at=None):
        weights = torch.zeros(5, requires_grad=True)
        optimizer = torch.optim.Adam([weights], lr=0.1)

        def loss_at(step):
            if step == stop_at:
                raise KeyboardInterrupt
            noise = torch.randn(5, generator=torch.Generator().manual_seed(step))
            return ((weights - target - 0.1 * noise) ** 2).sum()

        run_stage("test", 6, [weights], optimizer, loss_at, checkpoint, every=2, log=lambda line: None)
        return weights.detach()

    straight = train(tmp_path / "straight.pt")
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "broken.pt", stop_at=3)  # its last checkpoint is at step 2
    assert torch.equal(train(tmp_path / "broken.pt"), straight)


def test_pretraining_writes_a_small_predictor_with_its_card(predictor_run):
    predictor, basis, facts = load_predictor(predictor_run / "predictor.safetensors")
    assert basis.rank == 4 and facts["token"] == "sks" and facts["resolution"] == 32
    assert (predictor_run / "predictor.safetensors").stat().st_size < 20e6
    assert {path.name for path in predictor_run.glob("stage*.pt")} == {"stage1.pt", "stage2.pt", "stage3.pt"}  # to resume from
    record = json.loads((predictor_run / "pretraining.json").read_text())
    assert [row["subject"] for row in record["held_out"]] == [s.name for s in held_out_subjects()[:2]]
    assert not set(record["subjects"]) & {s.name for s in held_out_subjects()}
    card = (predictor_run / "README.md").read_text()
    assert f"| **mean** | {np.mean([r['base'] for r in record['held_out']]):.3f} |" in card and record["machine"] in card
    assert "min-SNR-5 timestep weights" in card and "bases learned over the pretraining subjects" in card


def test_pretraining_learns_the_shared_bases_and_the_predictor_carries_them(predictor_run):
    _, basis, _ = load_predictor(predictor_run / "predictor.safetensors")
    family = family_for(build_preset("tiny-sd"))
    random_basis = basis_for(family, 4, seed=0, groups=("attention",))
    assert basis.keys == random_basis.keys
    assert max((learned - start).abs().max() for learned, start in zip(basis.ups, random_basis.ups)) > 1e-3
    cores = load_state_dict(predictor_run / "subject_cores.safetensors")  # what stage 2 regressed, in the same bases
    for index, down in enumerate(basis.downs):
        torch.testing.assert_close(cores[f"basis.{index}.down"].half().float(), down)


def test_the_predicted_lora_is_a_kohya_file_diffusers_loads_as_tunelab_generate_draws(predictor_run, held_out_images, tiny_sd_folder, tmp_path):
    out = tmp_path / "predicted.safetensors"
    assert run_cli("personalize", "--hypernet", predictor_run / "predictor.safetensors", "--images", held_out_images, "--out", out) == 0
    lora, metadata = read_lora(out)
    predictor, basis, _ = load_predictor(predictor_run / "predictor.safetensors")
    expected, seconds = predict_lora(predictor, basis, training_renders(held_out_subjects()[0]))
    assert seconds < 1.0 and set(lora) == set(expected) and metadata["ss_network_dim"] == "4"
    for key in lora:
        torch.testing.assert_close(lora[key].delta(), expected[key].delta())
    assert any(module.delta().abs().max() > 0 for module in lora.values())

    assert run_cli("generate", "--model", tiny_sd_folder, "--prompt", "a sks circle", "--lora", out, "--steps", "4",
                   "--sampler", "dpm++_2m", "--guidance", "5", "--seed", "3", "--out", tmp_path / "generated.png") == 0
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)
    pipeline.load_lora_weights(str(out))
    image = pipeline("a sks circle", num_inference_steps=4, guidance_scale=5, generator=torch.Generator().manual_seed(3)).images[0]
    plain = StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    plain.scheduler = DPMSolverMultistepScheduler.from_config(plain.scheduler.config)
    without = plain("a sks circle", num_inference_steps=4, guidance_scale=5, generator=torch.Generator().manual_seed(3)).images[0]
    generated = np.asarray(Image.open(tmp_path / "generated.png")).astype(int)
    assert np.abs(generated - np.asarray(image).astype(int)).max() <= 1
    assert not np.array_equal(np.asarray(without), np.asarray(image))


def test_the_shipped_predictor_fits_the_toyworld_base(held_out_images, tmp_path):
    out = tmp_path / "shipped.safetensors"
    assert run_cli("personalize", "--hypernet", "toyworld", "--images", held_out_images, "--out", out) == 0
    lora, metadata = read_lora(out)
    modules = adaptable_modules(load_pipeline("toyworld"))
    check_fits(lora, {key: tuple(module.weight.shape) for key, module in modules.items()}, str(out))
    assert metadata["tunelab_predictor_token"] == "sks" and len(lora) == 100  # attention and feed-forward Linears


def test_refinement_starts_at_the_prediction_and_moves_away_from_it(predictor_run, held_out_images, tmp_path):
    predictor, basis, _ = load_predictor(predictor_run / "predictor.safetensors")
    start, _ = predict_lora(predictor, basis, training_renders(held_out_subjects()[0]))
    method = LoraFromStart(LoraOptions(rank=4, alpha=4.0, targets=["attention"]), start)
    method.setup(family_for(build_preset("tiny-sd")))
    begun = method.lora_set()
    assert set(begun) == set(start)
    for key in start:
        torch.testing.assert_close(begun[key].delta(), start[key].delta())

    out = tmp_path / "refined.safetensors"
    assert run_cli("personalize", "--hypernet", predictor_run / "predictor.safetensors", "--images", held_out_images,
                   "--out", out, "--refine-steps", "2", "--prompt", "a sks circle", "--model", "tiny-sd") == 0
    refined, metadata = read_lora(out)
    assert metadata["tunelab_refine_steps"] == "2" and set(refined) == set(start)
    assert max((refined[key].delta() - start[key].delta()).abs().max() for key in start) > 1e-4

    # the refinement weighs timesteps as the predictor trained (min-SNR 5) unless told otherwise; the weights reach
    # the loss (gamma 0.1 changes the weight of nearly every timestep of this epsilon model, 5 only the quietest)
    assert metadata["ss_min_snr_gamma"] == "5.0"
    refinements = {}
    for gamma in ("0", "0.1"):
        path = tmp_path / f"gamma-{gamma}.safetensors"
        assert run_cli("personalize", "--hypernet", predictor_run / "predictor.safetensors", "--images", held_out_images,
                       "--out", path, "--refine-steps", "2", "--prompt", "a sks circle", "--model", "tiny-sd",
                       "--min-snr-gamma", gamma) == 0
        refinements[gamma], metadata = read_lora(path)
        assert metadata["ss_min_snr_gamma"] == str(float(gamma))
    assert max((refinements["0"][key].delta() - refinements["0.1"][key].delta()).abs().max() for key in start) > 1e-6


def test_bad_input_is_one_line(predictor_run, held_out_images, tmp_path, capsys):
    lora_like = tmp_path / "other.safetensors"
    lora_like.write_bytes((predictor_run / "subject_cores.safetensors").read_bytes())
    cases = [
        (["--hypernet", tmp_path / "missing.safetensors", "--images", held_out_images], "weight predictor not found"),
        (["--hypernet", lora_like, "--images", held_out_images], "not a tunelab weight predictor"),
        (["--hypernet", predictor_run / "predictor.safetensors", "--images", tmp_path / "nothing"], "no such image or folder"),
        (["--hypernet", predictor_run / "predictor.safetensors", "--images", held_out_images, "--refine-steps", "3"], "needs --prompt"),
        (["--hypernet", predictor_run / "predictor.safetensors", "--images", held_out_images, "--refine-steps", "3",
          "--prompt", "a sks circle", "--min-snr-gamma", "-1"], "--min-snr-gamma must be 0"),
    ]
    for arguments, message in cases:
        code = run_cli("personalize", *arguments, "--out", tmp_path / "x.safetensors")
        assert message in one_line_error(capsys, code)
    code = run_cli("hyper", "pretrain", "--model", "tiny-sd", "--out", tmp_path / "run", "--subjects", "1000")
    assert "--subjects must be between 1 and" in one_line_error(capsys, code)
    code = run_cli("hyper", "pretrain", "--model", "tiny-sd", "--out", tmp_path / "run", "--min-snr-gamma", "-1")
    assert "--min-snr-gamma must be 0 or more" in one_line_error(capsys, code)
