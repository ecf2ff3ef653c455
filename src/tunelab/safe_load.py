"""Load weight files without ever running code hidden in them.

`.safetensors` holds only tensors by design. PyTorch pickles (`.ckpt`, `.pt`,
`.pth`, `.bin`) can hold arbitrary Python objects whose unpickling runs code,
so they are read with `torch.load(weights_only=True)` only; a file that needs
more than that is refused, never retried with full unpickling.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tunelab.errors import TunelabError

SAFETENSORS_EXTENSION = ".safetensors"
TORCH_PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin")


def load_state_dict(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a flat name -> tensor dict from a .safetensors file or a tensors-only PyTorch pickle."""
    path = _existing_file(path)
    extension = path.suffix.lower()
    if extension == SAFETENSORS_EXTENSION:
        return _load_safetensors(path, device)
    if extension in TORCH_PICKLE_EXTENSIONS:
        return _load_torch_pickle(path, device)
    known = ", ".join((SAFETENSORS_EXTENSION, *TORCH_PICKLE_EXTENSIONS))
    raise TunelabError(f"cannot load {path.name}: unknown weights format {extension or '(no extension)'!r}; expected one of {known}")


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The free-form string metadata stored in a .safetensors header (empty if there is none)."""
    path = _existing_file(path)
    try:
        with safe_open(str(path), framework="pt") as reader:
            return dict(reader.metadata() or {})
    except Exception as error:  # safetensors raises its own SafetensorError or OSError
        raise _not_safetensors(path, error) from error


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"weights file not found: {path}")
    return path


def _load_safetensors(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except Exception as error:
        raise _not_safetensors(path, error) from error


def _not_safetensors(path: Path, error: Exception) -> TunelabError:
    return TunelabError(f"cannot read {path.name}: not a valid .safetensors file ({_one_line(error)})")


def load_torch_tree(path: str | Path, device: str | torch.device = "cpu") -> object:
    """Everything a PyTorch pickle holds (dicts, tuples, lists, numbers, strings, tensors), read with
    weights_only=True: for layouts that nest their tensors, such as A1111 embeddings and hypernetworks."""
    path = _existing_file(path)
    if path.suffix.lower() not in TORCH_PICKLE_EXTENSIONS:
        raise TunelabError(f"cannot load {path.name}: expected a PyTorch file ({', '.join(TORCH_PICKLE_EXTENSIONS)})")
    return _torch_load(path, device)


def _load_torch_pickle(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    return _tensors_only(_unwrap_state_dict(_torch_load(path, device)), path)


def _torch_load(path: Path, device: str | torch.device) -> object:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only rejected a global it does not allow: the file wants to build Python objects.
        raise TunelabError(
            f"refusing to load {path.name}: it contains Python objects other than tensors (unsafe pickle); "
            "convert it to .safetensors with a tool you trust, or re-save only its tensors"
        ) from error
    except Exception as error:  # truncated zip, wrong file type, ...
        raise TunelabError(f"cannot read {path.name}: damaged or not a PyTorch checkpoint ({_one_line(error)})") from error


def _unwrap_state_dict(loaded: object) -> object:
    # Lightning-style .ckpt files keep the weights under "state_dict" next to step counters etc.
    while isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    return loaded


def _tensors_only(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    # Other top-level entries (step counters, version strings) are not weights; they are left out.
    if isinstance(loaded, torch.Tensor) or not isinstance(loaded, dict):
        raise TunelabError(f"cannot load {path.name}: it holds a {type(loaded).__name__}, not a dict of named tensors")
    tensors = {key: value for key, value in loaded.items() if isinstance(key, str) and isinstance(value, torch.Tensor)}
    if not tensors:
        shown = ", ".join(map(str, list(loaded)[:5]))
        raise TunelabError(f"cannot load {path.name}: no tensors at its top level (keys: {shown})")
    return tensors


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text[:200] or type(error).__name__
