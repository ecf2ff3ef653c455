"""The weight predictor's file (`tunelab hyper pretrain` writes it, `tunelab personalize` reads it): one
.safetensors with the network's and the fixed bases' tensors, and a JSON description in its metadata."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunelab.errors import TunelabError
from tunelab.formats.safetensors_io import save_tensors
from tunelab.safe_load import load_state_dict, read_safetensors_metadata

KIND = "tunelab.weight_predictor"
VERSION = 1


def write_predictor_file(path: Path, tensors: dict[str, torch.Tensor], description: dict) -> Path:
    """description: JSON-able facts (the network's shape, the bases' layer keys, the token, the base model)."""
    metadata = {"format": KIND, "version": str(VERSION), "description": json.dumps(description)}
    return save_tensors(tensors, Path(path), metadata)


def read_predictor_description(path: str | Path) -> dict:
    """The file's facts (shape, layer keys, token, base model) from its header, without reading its tensors."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise TunelabError(f"{path}: a weight predictor is a .safetensors file")
    metadata = read_safetensors_metadata(path)
    if metadata.get("format") != KIND:
        raise TunelabError(f"{path}: not a tunelab weight predictor (written by `tunelab hyper pretrain`)")
    if metadata.get("version") != str(VERSION):
        raise TunelabError(f"{path}: weight predictor version {metadata.get('version')}; this tunelab reads version {VERSION}")
    try:
        description = json.loads(metadata["description"])
    except (KeyError, ValueError):
        raise TunelabError(f"{path}: the weight predictor's description is missing or broken") from None
    return description


def read_predictor_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    description = read_predictor_description(path)
    return load_state_dict(Path(path)), description
