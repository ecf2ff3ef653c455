"""Several LoRAs at once: weights combine linearly, and detaching gives the base back exactly."""

from __future__ import annotations

import torch

from tunelab.formats.lora_io import write_lora
from tunelab.formats.lora_set import LoraModule
from tunelab.methods.lora import attach_loras, detach_loras
from tunelab.models.presets import build_preset

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def random_lora(seed: int, rank: int, alpha: float) -> dict[str, LoraModule]:
    generator = torch.Generator().manual_seed(seed)
    unet = build_preset("tiny-sd").unet
    lora = {}
    for name, module in unet.named_modules():
        if any(name.endswith("." + t) for t in TARGETS):
            out_features, in_features = module.weight.shape
            down = torch.randn(rank, in_features, generator=generator) * 0.3  # (r, in)
            up = torch.randn(out_features, rank, generator=generator) * 0.3  # (out, r)
            lora[f"unet.{name}"] = LoraModule(down, up, alpha)
    return lora


def denoiser_output(pipeline) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn((1, 4, 16, 16), generator=generator)  # (B, C, h, w)
    context = torch.randn((1, 77, 32), generator=generator)  # (B, tokens, width)
    with torch.no_grad():
        return pipeline.unet(latents, torch.tensor([400]), encoder_hidden_states=context).sample


def test_two_loras_at_weights_equal_one_lora_with_the_weighted_sum(tmp_path):
    first, second = random_lora(1, rank=2, alpha=1.0), random_lora(2, rank=3, alpha=6.0)
    a, b = 0.7, -0.4
    write_lora(first, tmp_path / "a.safetensors", "kohya", {})
    write_lora(second, tmp_path / "b.safetensors", "kohya", {})
    # The weighted sum as one LoRA, built by hand: stack the ranks, fold weights and scales into `up`.
    merged = {
        key: LoraModule(
            torch.cat([first[key].down, second[key].down]),  # (r1 + r2, in)
            torch.cat([a * first[key].scale * first[key].up, b * second[key].scale * second[key].up], dim=1),  # (out, r1 + r2)
            alpha=5.0,  # = r1 + r2, so the scale is 1
        )
        for key in first
    }
    write_lora(merged, tmp_path / "merged.safetensors", "kohya", {})

    both = build_preset("tiny-sd")
    attach_loras(both, [(tmp_path / "a.safetensors", a), (tmp_path / "b.safetensors", b)])
    single = build_preset("tiny-sd")
    attach_loras(single, [(tmp_path / "merged.safetensors", 1.0)])
    base = denoiser_output(build_preset("tiny-sd"))
    together = denoiser_output(both)
    assert not torch.allclose(together, base, atol=1e-3)
    torch.testing.assert_close(together, denoiser_output(single), atol=1e-5, rtol=1e-4)


def test_detaching_restores_the_base_exactly(tmp_path):
    write_lora(random_lora(3, rank=2, alpha=2.0), tmp_path / "a.safetensors", "kohya", {})
    pipeline = build_preset("tiny-sd")
    base = denoiser_output(pipeline)
    names = attach_loras(pipeline, [(tmp_path / "a.safetensors", 1.0)])
    assert not torch.equal(denoiser_output(pipeline), base)
    detach_loras(pipeline, names)
    assert torch.equal(denoiser_output(pipeline), base)
