"""The training loop's options do what they say."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from tunelab.methods.lora import LoraMethod, LoraOptions
from tunelab.models.family import family_for
from tunelab.models.presets import build_preset
from tunelab.training.loop import train
from tunelab.training.step import make_lr_scheduler
from tunelab.training.options import TrainOptions


def options_for(tmp_path, images, **overrides) -> TrainOptions:
    base = TrainOptions(model="tiny-sd", images=str(images), out=str(tmp_path), prompt="a photo of sks toy",
                        steps=4, learning_rate=5e-3, log_with="none")
    return replace(base, **overrides)


def run(options, **lora_overrides):
    method = LoraMethod(replace(LoraOptions(), **lora_overrides))
    artifact = train(options, method, {})
    return method, load_file(artifact)


def test_min_snr_weights_agree_with_diffusers_compute_snr():
    from diffusers.training_utils import compute_snr

    family = family_for(build_preset("tiny-sd"))
    timesteps = torch.tensor([0, 50, 300, 700, 999])
    snr = compute_snr(family.noise_scheduler, timesteps)
    expected = torch.clamp(snr, max=5.0) / snr
    torch.testing.assert_close(family.loss_weights(timesteps, 5.0), expected)
    assert torch.all(family.loss_weights(timesteps, None) == 1)
    family.prediction_type = "v_prediction"
    torch.testing.assert_close(family.loss_weights(timesteps, 5.0), torch.clamp(snr, max=5.0) / (snr + 1))


def test_noise_offset_shifts_each_channel_uniformly():
    family = family_for(build_preset("tiny-sd"))
    latents = torch.zeros(2, 4, 8, 8)
    plain = family.add_noise(latents, 0.0, torch.Generator().manual_seed(1))
    offset = family.add_noise(latents, 0.1, torch.Generator().manual_seed(1))
    difference = offset.target - plain.target  # (2, 4, 8, 8): epsilon target = noise
    per_channel = difference.mean(dim=(2, 3), keepdim=True)
    assert per_channel.abs().max() > 1e-3
    torch.testing.assert_close(difference, per_channel.expand_as(difference))


def test_v_prediction_target_is_velocity():
    pipeline = build_preset("tiny-sd")
    pipeline.scheduler.register_to_config(prediction_type="v_prediction")
    family = family_for(pipeline)
    latents = torch.randn(1, 4, 8, 8)
    batch = family.add_noise(latents, 0.0, torch.Generator().manual_seed(0))
    alphas = family.noise_scheduler.alphas_cumprod[batch.timesteps].view(-1, 1, 1, 1)
    noise = (batch.noisy - alphas.sqrt() * latents) / (1 - alphas).sqrt()
    torch.testing.assert_close(batch.target, alphas.sqrt() * noise - (1 - alphas).sqrt() * latents, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["constant", "cosine", "linear"])
def test_lr_schedules_warm_up_then_follow_their_shape(name):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1.0)
    options = TrainOptions(model="m", images="i", out="o", steps=10, lr_scheduler=name, lr_warmup_steps=2, learning_rate=1.0)
    scheduler = make_lr_scheduler(options, optimizer)
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[0] == 0.0 and rates[1] == 0.5 and rates[2] == 1.0
    if name == "constant":
        assert rates[2:] == [1.0] * 8
    else:
        assert all(a > b for a, b in zip(rates[2:], rates[3:]))


def test_same_seed_same_result_other_seed_differs(tmp_path, subject_images):
    _, first = run(options_for(tmp_path / "a", subject_images))
    _, again = run(options_for(tmp_path / "b", subject_images))
    _, other = run(options_for(tmp_path / "c", subject_images, seed=1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if k.endswith("lora_up.weight"))


def test_gradient_checkpointing_changes_memory_not_results(tmp_path, subject_images):
    _, plain = run(options_for(tmp_path / "a", subject_images))
    method, checkpointed = run(options_for(tmp_path / "b", subject_images, gradient_checkpointing=True))
    assert method.family.pipeline.unet.is_gradient_checkpointing
    for key in plain:
        torch.testing.assert_close(plain[key], checkpointed[key], atol=1e-6, rtol=1e-5)


def test_gradient_accumulation_runs_micro_batches_per_step(tmp_path, subject_images, monkeypatch):
    from tunelab.models.sd import StableDiffusionFamily

    calls = []
    original = StableDiffusionFamily.predict
    monkeypatch.setattr(StableDiffusionFamily, "predict", lambda self, *a: calls.append(1) or original(self, *a))
    run(options_for(tmp_path, subject_images, steps=3, gradient_accumulation=2))
    assert len(calls) == 6


def test_mixed_precision_bf16_keeps_lora_weights_fp32(tmp_path, subject_images):
    # Sampling mid-run too: the pipeline must run with bf16 frozen weights and fp32 LoRA weights.
    method, saved = run(options_for(tmp_path, subject_images, mixed_precision="bf16", steps=2, sample_every=2, sample_steps=2))
    assert (tmp_path / "samples" / "step-0000002-0.png").is_file()
    unet = method.family.pipeline.unet
    lora_dtypes = {p.dtype for n, p in unet.named_parameters() if ".lora_" in n}
    base_dtypes = {p.dtype for n, p in unet.named_parameters() if ".lora_" not in n}
    assert lora_dtypes == {torch.float32} and base_dtypes == {torch.bfloat16}
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_samples_checkpoints_logs_and_config_are_written(tmp_path, subject_images):
    options = options_for(tmp_path, subject_images, steps=4, sample_every=2, sample_steps=2,
                          sample_prompts=["a photo of sks toy", "a red circle"], checkpoint_every=1, keep_last=2,
                          log_with="tensorboard")
    method = LoraMethod(LoraOptions())
    train(options, method, {})
    samples = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert samples == ["step-0000002-0.png", "step-0000002-1.png", "step-0000004-0.png", "step-0000004-1.png"]
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["step-0000003", "step-0000004"]  # older ones pruned, no temporary folder left
    last = tmp_path / "checkpoints" / "step-0000004"
    assert (last / "lora.safetensors").is_file() and (last / "state.pt").is_file() and (last / "params.safetensors").is_file()
    final = load_file(tmp_path / "lora.safetensors")
    in_checkpoint = load_file(last / "lora.safetensors")
    assert all(torch.equal(final[k], in_checkpoint[k]) for k in final)
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))


def test_kohya_repeat_folders_train(tmp_path, subject_images):
    import shutil

    kohya = tmp_path / "data" / "3_sks toy"
    shutil.copytree(subject_images, kohya)
    _, saved = run(options_for(tmp_path / "out", tmp_path / "data", prompt=None, steps=2))
    assert saved


def test_latent_cache_encodes_each_image_once_and_changes_nothing(tmp_path, subject_images, monkeypatch):
    from tunelab.models.sd import StableDiffusionFamily

    encoded = []
    original = StableDiffusionFamily.latent_distribution
    monkeypatch.setattr(StableDiffusionFamily, "latent_distribution",
                        lambda self, px: encoded.append(px.shape[0]) or original(self, px))
    _, plain = run(options_for(tmp_path / "a", subject_images, steps=8))
    assert sum(encoded) == 8
    encoded.clear()
    _, cached = run(options_for(tmp_path / "b", subject_images, steps=8, cache_latents=True))
    assert sum(encoded) == 4  # 4 images, 2 epochs: each encoded once
    assert all(torch.equal(plain[k], cached[k]) for k in plain)
    # Flipped copies are other pixels: cached separately, results still identical.
    _, plain = run(options_for(tmp_path / "c", subject_images, steps=8, random_flip=True))
    _, cached = run(options_for(tmp_path / "d", subject_images, steps=8, random_flip=True, cache_latents=True))
    assert all(torch.equal(plain[k], cached[k]) for k in plain)


def test_aspect_ratio_buckets_train_on_mixed_shapes(tmp_path, monkeypatch):
    from PIL import Image

    from tunelab.models.sd import StableDiffusionFamily

    folder = tmp_path / "mixed"
    folder.mkdir()
    for index, size in enumerate([(64, 32), (64, 32), (32, 64), (32, 64)]):  # wide and tall
        Image.new("RGB", size, (40 * index, 120, 200)).save(folder / f"{index}.png")
    shapes = []
    original = StableDiffusionFamily.latent_distribution
    monkeypatch.setattr(StableDiffusionFamily, "latent_distribution",
                        lambda self, px: shapes.append(tuple(px.shape[2:])) or original(self, px))
    _, saved = run(options_for(tmp_path / "out", folder, buckets=True, batch_size=2, steps=4))
    assert saved and len(set(shapes)) == 2  # both buckets seen, never mixed in one batch
    assert all(h != w for h, w in shapes)


@pytest.mark.parametrize("technique,expected", [("lora", 1e-4), ("dreambooth", 5e-6)])
def test_each_technique_brings_its_own_default_learning_rate(tmp_path, subject_images, technique, expected):
    import yaml

    from helpers import run_cli

    assert run_cli("train", technique, "--model", "tiny-sd", "--images", subject_images, "--prompt", "a photo of sks toy",
                   "--out", tmp_path, "--steps", "1", "--log-with", "none", "--checkpoint-every", "1") == 0
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["learning_rate"] == expected
    state = torch.load(tmp_path / "checkpoints" / "step-0000001" / "state.pt", weights_only=True)
    assert {group["lr"] for group in state["optimizer"]["param_groups"]} == {expected}
