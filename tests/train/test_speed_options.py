"""Every speed option trains to the same result as without it, within numerical tolerance.

What is compared: the loss of every step (the model each step saw) and the saved LoRA. Adam's
first updates are lr * sign(gradient), so a gradient element near zero may flip sign on rounding
noise; the weights are therefore compared exactly where the arithmetic is the same, and through
the losses (and loosely) where only the order of floating-point operations changes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from tunelab.errors import TunelabError
from tunelab.methods.lora import LoraMethod, LoraOptions
from tunelab.training import speed
from tunelab.training import step as train_step
from tunelab.training.loop import train
from tunelab.training.options import TrainOptions


def train_lora(tmp_path, name, images, monkeypatch, lora=None, **overrides):
    """(loss of each step, saved LoRA tensors, the method) for a 4-step LoRA run on tiny-sd."""
    losses = []
    original = train_step.diffusion_losses
    monkeypatch.setattr(train_step, "diffusion_losses", lambda *a: (lambda r: losses.append(r[0].item()) or r)(original(*a)))
    options = TrainOptions(model="tiny-sd", images=str(images), out=str(tmp_path / name), prompt="a photo of sks toy",
                           steps=4, learning_rate=5e-3, log_with="none")
    method = LoraMethod(lora or LoraOptions())
    artifact = train(replace(options, **overrides), method, {})
    monkeypatch.setattr(train_step, "diffusion_losses", original)
    return losses, load_file(artifact), method


@pytest.fixture(scope="module")
def plain(tmp_path_factory, subject_images):
    """The run every option is compared with."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return train_lora(tmp_path_factory.mktemp("plain"), "run", subject_images, monkeypatch)


def assert_same_training(reference, other, rtol=1e-4, exact=False):
    (losses, saved, _), (other_losses, other_saved, _) = reference, other
    assert len(losses) == len(other_losses) == 4
    if exact:
        assert losses == other_losses
        assert all(torch.equal(saved[key], other_saved[key]) for key in saved)
    else:
        torch.testing.assert_close(torch.tensor(other_losses), torch.tensor(losses), rtol=rtol, atol=0)
        for key in saved:  # Adam's early sign-like steps: at most one step's worth apart per element
            torch.testing.assert_close(other_saved[key], saved[key], atol=2 * 5e-3 * 4, rtol=0)


def test_text_embedding_cache_encodes_each_caption_once_and_changes_nothing(tmp_path, subject_images, monkeypatch, plain):
    from tunelab.models.sd import StableDiffusionFamily

    encoded = []
    original = StableDiffusionFamily.encode_prompts
    monkeypatch.setattr(StableDiffusionFamily, "encode_prompts", lambda self, c: encoded.append(len(c)) or original(self, c))
    cached = train_lora(tmp_path, "cached", subject_images, monkeypatch, cache_text_embeddings=True)
    assert encoded == [1]  # one caption, encoded once
    assert_same_training(plain, cached, exact=True)
    # Batches are put together from the cached rows.
    encoded.clear()
    batched = train_lora(tmp_path, "b", subject_images, monkeypatch, batch_size=2)
    cached_batched = train_lora(tmp_path, "cb", subject_images, monkeypatch, batch_size=2, cache_text_embeddings=True)
    assert encoded == [2] * 4 + [1]
    assert_same_training(batched, cached_batched, rtol=1e-6)


def test_text_embedding_cache_is_refused_when_a_text_encoder_trains(tmp_path, subject_images, monkeypatch):
    with pytest.raises(TunelabError, match="--cache-text-embeddings needs frozen text encoders.*text_encoder"):
        train_lora(tmp_path, "te", subject_images, monkeypatch, lora=LoraOptions(train_text_encoder=True),
                   cache_text_embeddings=True)


def test_offloaded_encoders_come_to_the_device_only_to_fill_the_caches(tmp_path, subject_images, monkeypatch):
    entered = []
    original = speed.modules_on
    monkeypatch.setattr(train_step, "modules_on", lambda modules, device: entered.append(len(modules)) or original(modules, device))
    both = dict(cache_latents=True, cache_text_embeddings=True, sample_every=4, sample_steps=1)
    cached = train_lora(tmp_path, "cached", subject_images, monkeypatch, **both)
    assert entered == []
    offloaded = train_lora(tmp_path, "offloaded", subject_images, monkeypatch, offload_encoders=True, **both)
    # Step 1: the caption and image 1; steps 2-4: one new image each; then the sample images.
    assert entered == [2] * 6  # VAE and text encoder each time
    assert offloaded[2].family.pipeline.vae.device.type == "cpu"
    assert_same_training(cached, offloaded, exact=True)
    with pytest.raises(TunelabError, match="--offload-encoders needs --cache-latents and --cache-text-embeddings"):
        train_lora(tmp_path, "refused", subject_images, monkeypatch, offload_encoders=True, cache_latents=True)


def test_fused_adamw_matches_foreach(tmp_path, subject_images, monkeypatch, plain):
    created = []
    original = torch.optim.AdamW.__init__
    monkeypatch.setattr(torch.optim.AdamW, "__init__", lambda self, *a, **k: created.append(k) or original(self, *a, **k))
    fused = train_lora(tmp_path, "fused", subject_images, monkeypatch, adamw_implementation="fused")
    assert created[-1].get("fused") is True
    assert_same_training(plain, fused, rtol=1e-5)


@pytest.mark.parametrize("backend", ["math", "flash"])
def test_attention_backend_choice_matches_default(tmp_path, subject_images, monkeypatch, plain, backend):
    chosen = train_lora(tmp_path, backend, subject_images, monkeypatch, attention_backend=backend)
    assert_same_training(plain, chosen)


def test_attention_backends_auto_leaves_out_cudnn_on_a_gpu_and_gpu_only_kernels_are_refused_on_the_cpu():
    from torch.nn.attention import SDPBackend

    assert speed.attention_backends("auto", torch.device("cpu")) is None
    allowed = speed.attention_backends("auto", torch.device("cuda"))
    assert SDPBackend.CUDNN_ATTENTION not in allowed and SDPBackend.FLASH_ATTENTION in allowed and SDPBackend.MATH in allowed
    assert speed.attention_backends("cudnn", torch.device("cuda")) == [SDPBackend.CUDNN_ATTENTION]
    with pytest.raises(TunelabError, match="--attention-backend efficient needs a CUDA GPU"):
        speed.attention_backends("efficient", torch.device("cpu"))


def test_channels_last_matches(tmp_path, subject_images, monkeypatch, plain):
    result = train_lora(tmp_path, "cl", subject_images, monkeypatch, channels_last=True)
    unet = result[2].family.pipeline.unet
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert_same_training(plain, result)


def test_selective_gradient_checkpointing_matches(tmp_path, subject_images, monkeypatch, plain):
    calls = []
    original = speed.selective_checkpoint
    monkeypatch.setattr(speed, "selective_checkpoint", lambda module, *a: calls.append(1) or original(module, *a))
    result = train_lora(tmp_path, "sel", subject_images, monkeypatch, gradient_checkpointing=True,
                        gradient_checkpointing_mode="selective")
    assert calls  # the denoiser's blocks went through the selective checkpoint
    assert_same_training(plain, result, rtol=1e-5)


def test_lora_layers_skip_the_fp32_round_trip_with_the_same_result(tmp_path, subject_images, monkeypatch):
    casting = train_lora(tmp_path, "cast", subject_images, monkeypatch, mixed_precision="bf16", lora_fp32_inputs=True)
    direct = train_lora(tmp_path, "direct", subject_images, monkeypatch, mixed_precision="bf16")
    flags = {layer.cast_input_dtype_enabled for layer in direct[2].family.pipeline.unet.modules()
             if hasattr(layer, "cast_input_dtype_enabled")}
    assert flags == {False}
    assert_same_training(casting, direct, exact=True)  # autocast casts back to bf16: the same numbers


def test_bf16_frozen_weights_with_fp32_lora_stay_close_to_fp32(tmp_path, subject_images, monkeypatch, plain):
    result = train_lora(tmp_path, "bf16", subject_images, monkeypatch, mixed_precision="bf16")
    assert_same_training(plain, result, rtol=2e-2)  # bf16 has 8 bits of mantissa


def test_regional_compile_matches_eager(tmp_path, subject_images, monkeypatch, plain):
    # Inductor takes about a minute on two CPU cores for this model; aot_eager traces and compiles the
    # same graphs (dynamo + AOTAutograd) without generating kernels. (Inductor on this CPU: losses
    # within 5e-5 relative of eager, checked by hand.)
    monkeypatch.setattr(speed, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    try:
        result = train_lora(tmp_path, "compiled", subject_images, monkeypatch, compile="regional")
        blocks = [m for m in result[2].family.pipeline.unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
        assert blocks and all(block._compiled_call_impl is not None for block in blocks)
    finally:
        torch._dynamo.reset()
    assert_same_training(plain, result, exact=True)
