"""A technique's artifact stored in another precision: each floating-point tensor of a .safetensors file (or of
every .safetensors file in a model folder) rounded to fp32, fp16 or bf16, metadata and other files kept."""

from __future__ import annotations

import shutil
from pathlib import Path

from tunelab.formats.safetensors_io import save_tensors
from tunelab.precision import precision_dtype
from tunelab.safe_load import SAFETENSORS_EXTENSION, load_state_dict, read_safetensors_metadata


def _recast_file(source: Path, target: Path, precision: str) -> None:
    dtype = precision_dtype(precision)
    tensors = {key: tensor.to(dtype) if tensor.is_floating_point() else tensor for key, tensor in load_state_dict(source).items()}
    save_tensors(tensors, target, read_safetensors_metadata(source) or None)  # refuses values the precision overflows


def stored_in_precision(artifact: Path, precision: str, target: Path) -> Path:
    """`artifact` (a file, or a folder such as a diffusers pipeline) written to `target` with its tensors in `precision`."""
    if artifact.is_dir():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(artifact, target)
        for weights in sorted(target.rglob(f"*{SAFETENSORS_EXTENSION}")):
            _recast_file(weights, weights, precision)
        return target
    _recast_file(artifact, target, precision)
    return target
