"""Flow matching as the rectified-flow families (Flux.1, SD3) train it: the part they share.

For a clean latent x and noise n at sigma in (0, 1):

    noisy  = (1 - sigma) * x + sigma * n        target = n - x

and the denoiser's timestep is 1000 * sigma. sigma is drawn by each family's own rule, then
shifted toward noise by s: sigma' = s * sigma / (1 + (s - 1) * sigma) (FlowMatchEulerDiscreteScheduler's
`shift`; --flow-shift). A frozen T5 gives the same sequence for the same caption every time, so each
distinct caption goes through it once per run (`CaptionCache`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal

import torch

from tunelab.config import option
from tunelab.errors import TunelabError
from tunelab.models.family import Generators, NoisyBatch, draw_noise

TimestepSampling = Literal["sigmoid", "uniform", "flux_shift"]
# The denoisers take timesteps on the DDPM-like 0..1000 scale: t = 1000 * sigma.
TIMESTEP_SCALE = 1000


@dataclass
class FlowMatchingOptions:
    """`tunelab train` options every flow-matching family reads (a family lists the fields it does not read
    in its `unread_options`); None: not given (the family's default applies)."""

    scope: ClassVar[str] = "flow-matching models (Flux.1, SD3)"

    timestep_sampling: TimestepSampling | None = option(
        "Flux.1: how sigma is drawn; sigmoid (logit-normal, the default), uniform, "
        "or flux_shift (Flux.1's resolution-dependent shift)", default=None,
    )
    flow_shift: float | None = option(
        "flow-matching models: shift sigma toward noise, s*sigma/(1+(s-1)*sigma) (default: 1 on Flux.1, 3 on SD3)", default=None
    )
    flux_guidance: float | None = option("Flux.1-dev: value fed to the guidance embedding while training (default 1.0)", default=None)

    def __post_init__(self):
        # Checked where the options are made, so a bad value is refused before any model loads.
        if self.flow_shift is not None and self.flow_shift <= 0:
            raise TunelabError(f"--flow-shift must be positive, got {self.flow_shift}")


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """sigma -> s * sigma / (1 + (s - 1) * sigma): more of the draws toward noise for s > 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_matching_batch(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> NoisyBatch:
    """The noisy input, timestep and velocity target for latents (B, C, h, w) at sigmas (B,)."""
    s = sigmas.to(latents)[:, None, None, None]  # (B, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise  # (B, C, h, w)
    return NoisyBatch(noisy=noisy, timesteps=sigmas.to(latents) * TIMESTEP_SCALE, target=noise - latents)


class FlowMatchingNoise(ABC):
    """`add_noise` for a family that says how unshifted sigmas are drawn (`draw_sigmas`) and by how much
    they are shifted (`shift_for`); a family mixing it in without both cannot be made."""

    @abstractmethod
    def draw_sigmas(self, latents: torch.Tensor, generator: Generators) -> torch.Tensor:
        """Unshifted sigma in (0, 1) per sample: (B,)."""

    @abstractmethod
    def shift_for(self, latents: torch.Tensor) -> float:
        """The shift for latents of this size (fixed for SD3, resolution-dependent for Flux)."""

    def sample_sigmas(self, latents: torch.Tensor, generator: Generators) -> torch.Tensor:
        """sigma in (0, 1) per sample: (B,)."""
        return shift_sigmas(self.draw_sigmas(latents, generator), self.shift_for(latents))

    def add_noise(self, latents: torch.Tensor, noise_offset: float, generator: Generators) -> NoisyBatch:
        noise = draw_noise(latents, noise_offset, generator)
        return flow_matching_batch(latents, noise, self.sample_sigmas(latents, generator))


class CaptionCache:
    """Each distinct caption through a frozen encoder once: `encode(captions)` -> (B, L, D) stacked rows."""

    def __init__(self, encode_batch: Callable[[list[str]], torch.Tensor]):
        self._encode_batch = encode_batch  # captions -> (b, L, D)
        self._rows: dict[str, torch.Tensor] = {}  # caption -> (L, D)

    def encode(self, captions: list[str]) -> torch.Tensor:
        missing = [caption for caption in dict.fromkeys(captions) if caption not in self._rows]
        if missing:
            with torch.no_grad():
                self._rows.update(zip(missing, self._encode_batch(missing)))
        return torch.stack([self._rows[caption] for caption in captions])  # (B, L, D)
