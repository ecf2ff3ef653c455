"""DreamBooth on tiny-sd: prior preservation with cached class images, what trains, what is saved."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import run_cli
from tunelab.errors import TunelabError
from tunelab.methods.dreambooth import DreamBoothMethod, DreamBoothOptions
from tunelab.models.presets import build_preset
from tunelab.training.loop import train
from tunelab.training.options import TrainOptions

PROMPT = "a photo of sks toy"
CLASS_PROMPT = "a photo of a toy"


def options_for(out, images, cache, **overrides) -> TrainOptions:
    base = TrainOptions(model="tiny-sd", images=str(images), out=str(out), prompt=PROMPT, steps=3, learning_rate=1e-3,
                        log_with="none", class_prompt=CLASS_PROMPT, num_class_images=3, class_sample_steps=2,
                        class_cache=str(cache))
    return replace(base, **overrides)


def run(options, **method_overrides):
    method = DreamBoothMethod(replace(DreamBoothOptions(), **method_overrides))
    return method, train(options, method, {"technique": "dreambooth"})


def count_pipeline_calls(monkeypatch) -> list:
    from diffusers import StableDiffusionPipeline

    calls = []
    original = StableDiffusionPipeline.__call__
    monkeypatch.setattr(StableDiffusionPipeline, "__call__", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    return calls


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x.cpu().float(), y.cpu().float()) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_class_images_are_generated_once_and_reused(tmp_path, subject_images, monkeypatch):
    calls = count_pipeline_calls(monkeypatch)
    run(options_for(tmp_path / "first", subject_images, tmp_path / "cache"))
    assert len(calls) == 3  # one per class image
    cached = sorted((tmp_path / "cache").rglob("class-*.png"))
    assert len(cached) == 3
    stamps = [p.stat().st_mtime_ns for p in cached]

    calls.clear()
    run(options_for(tmp_path / "second", subject_images, tmp_path / "cache"))
    assert calls == []  # nothing generated: the cache served the second run
    assert [p.stat().st_mtime_ns for p in cached] == stamps

    calls.clear()  # asking for more generates only the missing ones
    run(options_for(tmp_path / "third", subject_images, tmp_path / "cache", num_class_images=5))
    assert len(calls) == 2 and len(list((tmp_path / "cache").rglob("class-*.png"))) == 5


def test_prior_loss_is_part_of_the_objective(tmp_path, subject_images, monkeypatch):
    from tunelab.training import step

    seen = []
    original = step.diffusion_losses
    monkeypatch.setattr(step, "diffusion_losses", lambda *a: seen.append(a[3].clone()) or original(*a))
    run(options_for(tmp_path, subject_images, tmp_path / "cache", batch_size=2, steps=1))
    assert seen[0].tolist() == [False, False, True, True]  # instance images, then their class images

    total, instance, prior = original(torch.ones(4, 1, 1, 1), torch.zeros(4, 1, 1, 1), torch.tensor([1.0, 1, 2, 2]),
                                      torch.tensor([False, False, True, True]), 0.5)
    assert instance.item() == 1.0 and prior.item() == 2.0 and total.item() == 2.0


def test_unet_only_by_default_text_encoder_on_request_and_frozen_after_its_stop_step(tmp_path, subject_images):
    base = build_preset("tiny-sd")
    method, _ = run(options_for(tmp_path / "a", subject_images, tmp_path / "cache"))
    trained = method.family.pipeline
    assert not _equal(trained.unet, base.unet)
    assert _equal(trained.text_encoder, base.text_encoder) and _equal(trained.vae, base.vae)

    method, _ = run(options_for(tmp_path / "b", subject_images, tmp_path / "cache"), train_text_encoder=True)
    assert not _equal(method.family.pipeline.text_encoder, base.text_encoder)
    assert _equal(method.family.pipeline.vae, base.vae)

    two_steps, _ = run(options_for(tmp_path / "c", subject_images, tmp_path / "cache", steps=2), train_text_encoder=True)
    stopped, _ = run(options_for(tmp_path / "d", subject_images, tmp_path / "cache", steps=4),
                     train_text_encoder=True, text_encoder_stop_step=2)
    assert _equal(stopped.family.pipeline.text_encoder, two_steps.family.pipeline.text_encoder)
    assert not _equal(stopped.family.pipeline.unet, two_steps.family.pipeline.unet)


def test_single_file_loads_in_diffusers_and_matches_the_saved_folder(tmp_path, subject_images):
    from diffusers import StableDiffusionPipeline

    _, folder = run(options_for(tmp_path, subject_images, tmp_path / "cache"), single_file=True)
    assert folder == tmp_path / "pipeline"
    from_folder = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    from_file = StableDiffusionPipeline.from_single_file(
        str(tmp_path / "model.safetensors"), config=str(folder), local_files_only=True,
        safety_checker=None, requires_safety_checker=False,
    )
    images = [
        pipeline(PROMPT, num_inference_steps=4, generator=torch.Generator().manual_seed(3), output_type="np").images
        for pipeline in (from_folder, from_file)
    ]
    np.testing.assert_allclose(images[0], images[1], atol=1e-5)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        assert '"technique": "dreambooth"' in handle.metadata()["tunelab_config"]


def test_fp16_save_ema_and_full_bf16(tmp_path, subject_images):
    method, folder = run(options_for(tmp_path / "ema", subject_images, tmp_path / "cache", steps=3, ema=True, ema_decay=0.5),
                         save_precision="fp16")
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(folder / "unet" / "diffusion_pytorch_model.safetensors").values()} == {torch.float16}
    saved = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True)
    live = method.family.pipeline.unet
    base = build_preset("tiny-sd").unet
    # EMA weights lie between the base and the live weights: neither of them.
    assert not _equal(saved, live) and not _equal(saved, base)
    assert live.dtype == torch.float32  # saving did not convert the training model

    with pytest.raises(TunelabError, match="--full-bf16 needs --mixed-precision bf16"):
        run(options_for(tmp_path / "bf16", subject_images, tmp_path / "cache", steps=2), full_bf16=True)
    method, _ = run(options_for(tmp_path / "bf16", subject_images, tmp_path / "cache", steps=2, mixed_precision="bf16"),
                    full_bf16=True)
    assert method.family.pipeline.unet.dtype == torch.bfloat16


def test_dreambooth_lora_uses_the_same_prior_preservation(tmp_path, subject_images, monkeypatch):
    calls = count_pipeline_calls(monkeypatch)
    code = run_cli("train", "lora", "--model", "tiny-sd", "--images", subject_images, "--prompt", PROMPT,
                   "--class-prompt", CLASS_PROMPT, "--num-class-images", "2", "--class-sample-steps", "2",
                   "--class-cache", tmp_path / "cache", "--out", tmp_path / "out", "--steps", "2", "--log-with", "none")
    assert code == 0 and len(calls) == 2
    assert (tmp_path / "out" / "lora.safetensors").is_file()


def test_bad_prior_settings_and_folders(tmp_path, subject_images, capsys):
    out = tmp_path / "out"  # a folder of its own: tmp_path holds the class-image folder, not tunelab's files
    with pytest.raises(TunelabError, match="--prior-loss-weight must then be > 0"):
        run(options_for(out, subject_images, tmp_path / "cache", prior_loss_weight=0))
    (tmp_path / "no-class-images").mkdir()
    with pytest.raises(TunelabError, match="no images"):
        run(options_for(out, subject_images, tmp_path / "cache", class_images=str(tmp_path / "no-class-images")))
    with pytest.raises(TunelabError, match="needs --class-prompt"):
        run(options_for(out, subject_images, tmp_path / "cache", class_prompt=None, class_images=str(subject_images)))

    common = ["train", "dreambooth", "--model", "tiny-sd", "--images", subject_images, "--prompt", PROMPT,
              "--out", tmp_path / "run", "--steps", "1", "--log-with", "none"]
    assert run_cli(*common) == 0
    assert run_cli(*common, "--steps", "2") == 0  # the same run, continued: allowed
    assert run_cli(*common, "--learning-rate", "0.5") == 2  # a different run into the same folder
    assert "already holds a different run (differs in: learning_rate)" in capsys.readouterr().err
    assert run_cli(*common, "--learning-rate", "0.5", "--overwrite") == 0
