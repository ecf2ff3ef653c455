"""The pretraining recipe: runs end to end in a few steps, is reproducible from its seed, and resumes exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import run_cli
from tunelab.errors import TunelabError
from tunelab.models.loading import load_pipeline
from tunelab.models.sd import StableDiffusionFamily
from tunelab.toyworld.pretrain import Stopped, build_base, pretrain, pretraining_loss_weights, recipe_for

FEW_STEPS = ["--scenes", "64", "--vae-steps", "2", "--vae-batch", "4", "--steps", "2", "--batch", "4",
             "--eval-every", "2", "--eval-images", "2", "--score-images", "2"]
WEIGHTS = ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors")


def same_weights(first_folder, second_folder) -> bool:
    for part in WEIGHTS:
        first, second = load_file(first_folder / part), load_file(second_folder / part)
        if first.keys() != second.keys() or not all(torch.equal(first[key], second[key]) for key in first):
            return False
    return True


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
    assert "Images 32x32 px, latents 8x8x4" in card


@pytest.mark.parametrize("generation", [1, 2])
def test_the_same_seed_gives_the_same_weights(tmp_path, generation):
    for name in ("a", "b"):
        assert run_cli("toyworld", "pretrain", "--generation", generation, "--out", tmp_path / name, *FEW_STEPS) == 0
    assert same_weights(tmp_path / "a", tmp_path / "b")
    if generation == 2:  # 64 px through a 4x autoencoder: 16x16 latents
        pipeline = load_pipeline(tmp_path / "a")
        assert pipeline.unet.config.sample_size == 16 and pipeline.vae_scale_factor == 4
        # its noisiest training input is pure noise, as sampling starts from (nothing of the image left to read)
        assert StableDiffusionFamily(pipeline).noise_scheduler.alphas_cumprod[-1] == 0.0
        assert pipeline.scheduler.config.prediction_type == "v_prediction"
        assert "Images 64x64 px, latents 16x16x4" in (tmp_path / "a" / "README.md").read_text()
        card = (tmp_path / "a" / "README.md").read_text()
        assert "--generation 2" in card and "--vae-crop 32" in card
        record = json.loads((tmp_path / "a" / "pretraining.json").read_text())
        assert set(record["autoencoder_scores"]) == {"readback_accuracy", "bullseye_fidelity", "checker_fidelity", "flag_fidelity"}
        assert f"read back exactly {record['autoencoder_scores']['readback_accuracy']:.2f}" in card


def test_generation_3_trains_generation_2s_autoencoder_bit_for_bit(tmp_path):
    """Generation 3's autoencoder stage is generation 2's (its recipe names generation 2's scenes), which is what
    lets its run start from generation 2's autoencoder (docs/toyworld.md)."""
    tiny = {"scenes": 48, "vae_steps": 3, "vae_batch": 2, "steps": 1, "batch": 2, "eval_every": 0}
    for generation in (2, 3):
        pretrain(tmp_path / str(generation), recipe_for(generation, **tiny))
    two, three = (load_file(tmp_path / g / "vae" / "diffusion_pytorch_model.safetensors") for g in ("2", "3"))
    assert two.keys() == three.keys() and all(torch.equal(two[key], three[key]) for key in two)
    three = load_pipeline(tmp_path / "3")
    assert three.unet.config.sample_size == 8 and len(three.unet.config.block_out_channels) == 3  # down to 2x2
    assert three.scheduler.config.prediction_type == "v_prediction"


def test_a_stopped_run_resumes_to_the_same_weights_as_one_never_stopped(tmp_path):
    recipe = recipe_for(2, scenes=48, vae_steps=4, vae_batch=2, steps=5, batch=3, eval_every=0)
    pretrain(tmp_path / "whole", recipe)

    def stop_at(stage, step):
        def progress(current_stage, current_step, value):
            if (current_stage, current_step) == (stage, step):
                raise Stopped
        return progress

    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(Stopped):  # in the autoencoder stage, one step after a checkpoint
        pretrain(tmp_path / "resumed", recipe, stop_at("autoencoder", 3), checkpoints=checkpoints, checkpoint_every=2)
    with pytest.raises(TunelabError, match="--resume"):  # a fresh start would silently throw the run away
        pretrain(tmp_path / "resumed", recipe, checkpoints=checkpoints, checkpoint_every=2)
    with pytest.raises(Stopped):  # then in the denoiser stage
        pretrain(tmp_path / "resumed", recipe, stop_at("denoiser", 3), checkpoints=checkpoints, checkpoint_every=2, resume=True)
    pretrain(tmp_path / "resumed", recipe, checkpoints=checkpoints, checkpoint_every=2, resume=True)
    assert same_weights(tmp_path / "whole", tmp_path / "resumed")
    with pytest.raises(TunelabError, match="another recipe"):
        pretrain(tmp_path / "other", recipe_for(2, scenes=48, vae_steps=4, vae_batch=2, steps=6, batch=3, eval_every=0),
                 checkpoints=checkpoints, resume=True)


def test_generation_4_continues_a_generation_3_base_keeping_its_autoencoder(tmp_path):
    assert run_cli("toyworld", "pretrain", "--generation", 3, "--out", tmp_path / "three", *FEW_STEPS) == 0
    few = ["--scenes", "64", "--steps", "2", "--batch", "4", "--eval-every", "2", "--eval-images", "2", "--score-images", "2"]
    for name in ("a", "b"):
        assert run_cli("toyworld", "pretrain", "--generation", 4, "--from", tmp_path / "three", "--out", tmp_path / name, *few) == 0
    assert same_weights(tmp_path / "a", tmp_path / "b")  # seeded, as every recipe
    three, four = load_pipeline(tmp_path / "three"), load_pipeline(tmp_path / "a")
    assert all(torch.equal(a, b) for a, b in zip(three.vae.state_dict().values(), four.vae.state_dict().values()))
    assert four.vae.config.scaling_factor == three.vae.config.scaling_factor  # the latents its denoiser learned
    assert not torch.equal(three.unet.conv_in.weight, four.unet.conv_in.weight)  # the denoiser trained on
    record = json.loads((tmp_path / "a" / "pretraining.json").read_text())
    started = json.loads((tmp_path / "three" / "pretraining.json").read_text())
    assert record["started_from"] == {"generation": 3, "total_seconds": started["total_seconds"], "machine": started["machine"]}
    assert record["world"]["patterned"] == 0.5
    card = (tmp_path / "a" / "README.md").read_text()
    assert "tunelab toyworld pretrain --out DIR --from GENERATION_3_DIR --seed 0" in card and "--generation 4" in card
    assert "the generation-3 base, made by its own recipe" in card and "minutes in all, from scratch" in card
    # the card's command, run as written, makes the same weights
    command = next(line.split()[1:] for line in card.splitlines() if line.strip().startswith("tunelab toyworld pretrain"))
    command = [str(tmp_path / "c") if word == "DIR" else str(tmp_path / "three") if word == "GENERATION_3_DIR" else word
               for word in command]
    assert run_cli(*command, "--score-images", 2) == 0
    assert same_weights(tmp_path / "a", tmp_path / "c")
    # generation 5 continues generation 4; its card counts the whole chain's time, generation 3's too
    assert run_cli("toyworld", "pretrain", "--generation", 5, "--from", tmp_path / "a", "--out", tmp_path / "five", *few) == 0
    five = json.loads((tmp_path / "five" / "pretraining.json").read_text())
    assert five["started_from"]["generation"] == 4
    assert five["started_from"]["total_seconds"] == pytest.approx(record["total_seconds"] + started["total_seconds"], abs=0.11)
    assert five["world"]["keep"]["colour"] == 0.6
    # generation 6 trains generation 5's decoder alone: the encoder, its latent scale and the denoiser stay bit for bit
    assert run_cli("toyworld", "pretrain", "--generation", 6, "--from", tmp_path / "five", "--out", tmp_path / "six",
                   "--scenes", "64", "--vae-steps", "2", "--vae-batch", "4", "--score-images", "2") == 0
    five, six = load_pipeline(tmp_path / "five"), load_pipeline(tmp_path / "six")
    for part in ("unet", "text_encoder"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(five, part).state_dict().values(), getattr(six, part).state_dict().values()))
    before, after = five.vae.state_dict(), six.vae.state_dict()
    encoder = [key for key in before if key.startswith(("encoder.", "quant_conv."))]
    decoder = [key for key in before if key.startswith(("decoder.", "post_quant_conv."))]
    assert encoder and all(torch.equal(before[key], after[key]) for key in encoder)
    assert any(not torch.equal(before[key], after[key]) for key in decoder)
    assert six.vae.config.scaling_factor == five.vae.config.scaling_factor
    assert "bullseye_fidelity" in json.loads((tmp_path / "six" / "pretraining.json").read_text())["autoencoder_scores"]
    card = (tmp_path / "six" / "README.md").read_text()
    assert "--decoder-noise 0.1" in card and "--decoder-only" not in card  # what it trains is the generation's own
    assert "Stage 2, the decoder alone" in card and "Gaussian noise of std 0.1" in card and "During training" not in card


def test_a_continuing_recipe_needs_the_base_it_continues(tmp_path, capsys):
    assert run_cli("toyworld", "pretrain", "--generation", 3, "--out", tmp_path / "three", *FEW_STEPS) == 0
    capsys.readouterr()
    few = ["--scenes", "64", "--steps", "2", "--batch", "4", "--eval-every", "0", "--score-images", "2"]
    assert run_cli("toyworld", "pretrain", "--generation", 4, "--out", tmp_path / "x", *few) == 2
    assert "--from" in capsys.readouterr().err
    record = json.loads((tmp_path / "three" / "pretraining.json").read_text())
    record["recipe"]["generation"] = 2
    (tmp_path / "three" / "pretraining.json").write_text(json.dumps(record))
    assert run_cli("toyworld", "pretrain", "--generation", 4, "--from", tmp_path / "three", "--out", tmp_path / "x", *few) == 2
    assert "generation-2 base" in capsys.readouterr().err
    assert run_cli("toyworld", "pretrain", "--generation", 4, "--from", tmp_path / "three", "--vae-steps", 3, "--out", tmp_path / "x", *few) == 2
    assert "--vae-steps must be 0" in capsys.readouterr().err
    assert run_cli("toyworld", "pretrain", "--generation", 3, "--vae-steps", 0, "--out", tmp_path / "x", *few) == 2
    assert "--vae-steps must be at least 1" in capsys.readouterr().err
    assert run_cli("toyworld", "pretrain", "--generation", 6, "--from", tmp_path / "three", "--vae-steps", 0, "--out", tmp_path / "x", *few) == 2
    assert "--vae-steps must be at least 1 for a recipe that trains its base's decoder" in capsys.readouterr().err
    assert run_cli("toyworld", "pretrain", "--generation", 6, "--from", tmp_path / "three", "--decoder-noise", -0.1, "--out", tmp_path / "x", *few) == 2
    assert "--decoder-noise" in capsys.readouterr().err
    assert run_cli("toyworld", "pretrain", "--generation", 3, "--from", tmp_path / "three", "--out", tmp_path / "x", *FEW_STEPS) == 2
    assert not (tmp_path / "x").exists()


def test_resume_without_a_checkpoint_folder_is_refused(tmp_path):
    assert run_cli("toyworld", "pretrain", "--out", tmp_path / "a", "--resume", *FEW_STEPS) == 2


def test_v_prediction_pretraining_caps_each_steps_weight_in_x0_terms_and_keeps_the_pure_noise_step():
    family = StableDiffusionFamily(build_base(0, 3))
    alphas = family.noise_scheduler.alphas_cumprod
    timesteps = torch.tensor([0, 500, 999])
    weights = pretraining_loss_weights(family, timesteps, 5.0)
    expected = [min(1.0, 5.0 * (1.0 - alphas[t].item())) for t in timesteps]  # min(1, gamma / (SNR + 1))
    assert torch.allclose(weights, torch.tensor(expected), atol=1e-6)
    assert weights[-1] == 1.0 and alphas[999] == 0.0  # zero terminal SNR: pure noise keeps its full weight
    assert weights[0] < 0.01  # a nearly clean step: the cap
    assert torch.equal(pretraining_loss_weights(family, timesteps, 0.0), torch.ones(3))
