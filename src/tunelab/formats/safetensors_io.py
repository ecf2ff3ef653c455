"""Writing .safetensors files: finite values only, never a half-written file."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tunelab.errors import TunelabError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision_dtype(name: str) -> torch.dtype:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise TunelabError(f"unknown precision {name!r}; choose from {', '.join(PRECISIONS)}") from None


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise TunelabError(f"refusing to write {path}: tensor {key} holds NaN or infinite values")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    contiguous = {key: tensor.detach().cpu().contiguous() for key, tensor in tensors.items()}
    save_file(contiguous, str(temporary), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # an ordinary file's permissions, not the temp file's 0600
    os.replace(temporary, path)  # atomic: readers see the old file or the whole new one
    return path
