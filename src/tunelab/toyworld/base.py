"""The pretrained toyworld base that ships inside the package (preset `toyworld`)."""

from __future__ import annotations

from pathlib import Path

import torch

from tunelab.errors import TunelabError

BASE_FOLDER = Path(__file__).parent / "base"  # a diffusers pipeline folder, fp16 weights, with its model card


def load_toyworld(seed: int = 0):
    """The shipped weights, in fp32 (the seed is ignored: a pretrained model has no random init)."""
    from tunelab.models.loading import load_diffusers_folder

    if not (BASE_FOLDER / "model_index.json").is_file():
        raise TunelabError(f"the toyworld base is missing from this install ({BASE_FOLDER}); "
                           "build one with `tunelab toyworld pretrain --out DIR` and pass --model DIR")
    return load_diffusers_folder(BASE_FOLDER, torch.float32)
