"""A diffusers pipeline folder (model_index.json and one folder per component) -> its pipeline."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import diffusers
import torch

from tunelab.errors import TunelabError


def load_diffusers_folder(folder: Path, torch_dtype: torch.dtype):
    index = json.loads((folder / "model_index.json").read_text())
    class_name = index.get("_class_name", "")
    pipeline_class = getattr(diffusers, class_name, None)
    if pipeline_class is None:
        raise TunelabError(f"{folder}: unknown pipeline class {class_name!r} in model_index.json")
    extra = {}
    if "safety_checker" in index:
        # Training and generation here never need the NSFW classifier; skipping it saves memory and time.
        extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    try:
        return pipeline_class.from_pretrained(folder, dtype=torch_dtype, local_files_only=True, **extra)
    except pickle.UnpicklingError:
        # transformers/diffusers read .bin weights with weights_only=True; never pass on their advice to retry without.
        pickles = sorted(str(path.relative_to(folder)) for suffix in ("*.bin", "*.pt", "*.ckpt") for path in folder.rglob(suffix))
        raise TunelabError(f"refusing to load {folder}: a weights file ({', '.join(pickles[:3]) or 'a pickle'}) contains Python "
                           "objects other than tensors (unsafe pickle); convert it to .safetensors with a tool you trust") from None
    except (OSError, ValueError, EOFError, RuntimeError) as error:  # missing, damaged or mismatched component files
        raise TunelabError(f"cannot load diffusers folder {folder}: {error}".splitlines()[0]) from None
