"""The weight predictor: a subject's images in, its fixed-basis LoRA cores out, in one forward pass.

A small convolutional encoder reads each image (shape, colours, pattern, wherever the object stands), the
features of a subject's images are averaged, and an MLP decoder writes every layer's core, as HyperDreamBooth's
encoder and decoder do at a much larger scale.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tunelab.errors import TunelabError
from tunelab.formats.lora_set import LoraSet
from tunelab.formats.weight_predictor import read_predictor_file, write_predictor_file
from tunelab.lora.fixed_basis import FixedBasis


@dataclass(frozen=True)
class PredictorShape:
    layers: int  # adapted layers (cores per subject)
    rank: int  # each core is rank x rank
    channels: int = 32  # the encoder's first width (doubled twice)
    hidden: int = 512  # feature and decoder width


class WeightPredictor(nn.Module):
    def __init__(self, shape: PredictorShape):
        super().__init__()
        self.shape = shape
        c = shape.channels
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.GELU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(4 * c, 4 * c, 3, padding=1), nn.GELU(),
        )
        self.features = nn.Sequential(nn.Linear(8 * c, shape.hidden), nn.GELU(), nn.Linear(shape.hidden, shape.hidden))
        self.decoder = nn.Sequential(nn.GELU(), nn.Linear(shape.hidden, shape.hidden), nn.GELU(),
                                     nn.Linear(shape.hidden, shape.layers * shape.rank * shape.rank))
        nn.init.zeros_(self.decoder[-1].weight)  # starts at the mean core (its bias), as a fresh LoRA starts at zero
        nn.init.zeros_(self.decoder[-1].bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (S, N, 3, H, W) in [-1, 1], N images of each of S subjects -> cores (S, L, r, r)."""
        subjects, count = images.shape[:2]
        maps = self.encoder(images.flatten(0, 1))  # (S*N, 4c, H/4, W/4)
        pooled = torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=1)  # (S*N, 8c): where the object stands does not matter
        features = self.features(pooled).view(subjects, count, -1).mean(dim=1)  # (S, hidden): the subject, over its images
        shape = self.shape
        return self.decoder(features).view(subjects, shape.layers, shape.rank, shape.rank)


def image_batch(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images of one subject -> (1, N, 3, H, W) in [-1, 1]."""
    return (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0).unsqueeze(0)


@torch.no_grad()
def predict_lora(predictor: WeightPredictor, basis: FixedBasis, images: list[np.ndarray]) -> tuple[LoraSet, float]:
    """One subject's LoRA from its images in one forward pass: (the LoRA, seconds it took)."""
    started = time.perf_counter()
    cores = predictor(image_batch(images))[0]  # (L, r, r)
    lora = basis.lora_set(cores)
    return lora, time.perf_counter() - started


def save_predictor(path: Path, predictor: WeightPredictor, basis: FixedBasis, facts: dict, dtype=torch.float16) -> Path:
    """The predictor and its bases in one file (fp16 by default: the shipped size), with `facts` (token, base
    model, resolution, ...) in its description."""
    tensors = {f"predictor.{key}": value.to(dtype) for key, value in predictor.state_dict().items()}
    tensors |= {key: value.to(dtype) for key, value in basis.tensors().items()}
    description = {"shape": asdict(predictor.shape), "layer_keys": basis.keys, **facts}
    return write_predictor_file(path, tensors, description)


def load_predictor(path: str | Path) -> tuple[WeightPredictor, FixedBasis, dict]:
    """(predictor in fp32, eval mode; its bases; the file's facts)."""
    tensors, description = read_predictor_file(path)
    try:
        shape = PredictorShape(**description.pop("shape"))
        keys = description.pop("layer_keys")
    except (KeyError, TypeError):
        raise TunelabError(f"{path}: the weight predictor's description lacks its shape or layer keys") from None
    predictor = WeightPredictor(shape)
    state = {key.removeprefix("predictor."): value.float() for key, value in tensors.items() if key.startswith("predictor.")}
    try:
        predictor.load_state_dict(state)
    except RuntimeError as error:
        raise TunelabError(f"{path}: the predictor's weights do not fit its shape ({str(error).splitlines()[0]})") from None
    basis = FixedBasis.from_tensors(keys, tensors)
    if basis.layers != shape.layers or basis.rank != shape.rank:
        raise TunelabError(f"{path}: {basis.layers} bases of rank {basis.rank} for a predictor of {shape.layers} layers of rank {shape.rank}")
    return predictor.eval(), basis, description
