"""How much storing a LoRA in fp16 or bf16 changes what the model computes, against fp32.

The model runs in fp32 throughout; only the LoRA's factors are rounded to each precision,
as a file in that precision would hold them, then baked in. The probe is the denoiser's
prediction for the prompt on fixed noise at a few timesteps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from tunelab.formats.lora_set import LoraSet
from tunelab.lora.merging import applied
from tunelab.models.family import NoisyBatch, family_for
from tunelab.precision import PRECISIONS

PROBE_TIMESTEPS = (900, 500, 100)


@dataclass
class Deviation:
    precision: str
    max_abs: float  # largest |output - fp32 output|
    rms: float  # root mean square of output - fp32 output
    relative: float  # rms over the rms of the LoRA's own effect (fp32 output - output without the LoRA)


def denoiser_probe(pipeline, prompt: str, seed: int) -> Callable[[], torch.Tensor]:
    """A function returning the denoiser's output on one fixed input, for comparing model states."""
    family = family_for(pipeline)
    denoiser = family.module(family.denoiser_name)
    batch = len(PROBE_TIMESTEPS)
    channels = pipeline.vae.config.latent_channels
    side = family.native_resolution // pipeline.vae_scale_factor
    noise = torch.randn((batch, channels, side, side), generator=torch.Generator().manual_seed(seed))  # (T, C, h, w)
    noisy = noise.to(denoiser.device, denoiser.dtype)
    timesteps = torch.tensor(PROBE_TIMESTEPS, device=denoiser.device)

    def run() -> torch.Tensor:
        with torch.no_grad():
            conditioning = family.encode_prompts([prompt] * batch)
            return family.predict(NoisyBatch(noisy, timesteps, None), conditioning).float().cpu()  # (T, C, h, w)

    return run


def _rms(tensor: torch.Tensor) -> float:
    return float(tensor.square().mean().sqrt())


def precision_deviations(
    modules: dict[str, torch.nn.Module], lora: LoraSet, probe: Callable[[], torch.Tensor], weight: float = 1.0
) -> tuple[list[Deviation], float]:
    """Per precision, the probe's deviation from the fp32 LoRA; also the rms of the fp32 LoRA's effect."""
    without = probe()
    outputs = {}
    for name, dtype in PRECISIONS.items():
        rounded = {key: module.to(dtype) for key, module in lora.items()}
        with applied(modules, [(rounded, weight)]):
            outputs[name] = probe()
    reference = outputs["fp32"]
    effect = _rms(reference - without)
    deviations = [
        Deviation(name, float((output - reference).abs().max()), _rms(output - reference), _rms(output - reference) / effect if effect else 0.0)
        for name, output in outputs.items()
    ]
    return deviations, effect
