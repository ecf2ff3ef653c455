"""Writing .safetensors files: finite values only, never a half-written file."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from tunelab.errors import TunelabError
from tunelab.formats.pt_archive import torch_archive_bytes


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    _refuse_non_finite(tensors, path)
    contiguous = {key: tensor.detach().cpu().contiguous() for key, tensor in tensors.items()}
    return _write_atomically(Path(path), lambda temporary: save_file(contiguous, str(temporary), metadata=metadata))


def save_torch_tree(tree: dict, path: Path) -> Path:
    """A .pt of plain dicts, tuples, lists, numbers, strings and tensors: what weights_only=True reads back
    and stock A1111 loads (formats/pt_archive.py)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _own_cpu_tensors(tree, "", tensors)
    _refuse_non_finite(tensors, path)
    return _write_atomically(Path(path), lambda temporary: Path(temporary).write_bytes(torch_archive_bytes(tree)))


def _own_cpu_tensors(tree, name: str, found: dict[str, torch.Tensor]):
    """A copy of tree whose tensors own their memory (torch.save of a view writes its whole base storage)."""
    if isinstance(tree, torch.Tensor):
        found[name] = tree = tree.detach().cpu().clone()
        return tree
    if isinstance(tree, dict):
        return {key: _own_cpu_tensors(value, f"{name}/{key}", found) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_own_cpu_tensors(value, f"{name}/{index}", found) for index, value in enumerate(tree))
    return tree


def _refuse_non_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise TunelabError(f"refusing to write {path}: tensor {key} holds NaN or infinite values")


def _write_atomically(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(temporary)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # an ordinary file's permissions, not the temp file's 0600
    os.replace(temporary, path)  # atomic: readers see the old file or the whole new one
    return path
