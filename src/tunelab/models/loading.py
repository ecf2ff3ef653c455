"""Model reference -> diffusers pipeline: a preset name, a diffusers folder or a single checkpoint file."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers.utils.logging
import torch
import transformers.utils.logging
from safetensors import safe_open

from tunelab.errors import TunelabError
from tunelab.models.diffusers_folder import load_diffusers_folder
from tunelab.models.original_layout import SDXL_CONDITIONER_PREFIX
from tunelab.models.presets import PRESET_PIPELINES, PRESETS, build_preset
from tunelab.models.sd3_single_file import is_sd3_checkpoint
from tunelab.models.single_file import load_single_file

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def _quiet_progress_bars() -> None:
    # Per-component "Loading pipeline components" / "Loading weights" bars drown the run's own bar.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def load_pipeline(reference: str | Path, *, torch_dtype: torch.dtype = torch.float32, seed: int = 0):
    """Everything a model flag accepts resolves here."""
    _quiet_progress_bars()
    reference = str(reference)
    if reference in PRESETS:
        return build_preset(reference, seed=seed).to(dtype=torch_dtype)
    path = Path(reference).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise TunelabError(f"{path} is a folder but not a diffusers model (no model_index.json)")
        return load_diffusers_folder(path, torch_dtype)
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise TunelabError(f"{path}: not a model checkpoint (expected {', '.join(CHECKPOINT_SUFFIXES)})")
        return load_single_file(path, torch_dtype=torch_dtype)
    raise TunelabError(
        f"model not found: {reference!r} is not a preset ({', '.join(sorted(PRESETS))}), a diffusers folder or a checkpoint file"
    )


def pipeline_class_name(reference: str | Path) -> str | None:
    """The diffusers pipeline class a model reference loads as, read without loading it; None where only
    loading can tell (a pickled checkpoint, an unreadable file: loading reports those)."""
    reference = str(reference)
    if reference in PRESET_PIPELINES:
        return PRESET_PIPELINES[reference]
    path = Path(reference).expanduser()
    if (path / "model_index.json").is_file():
        try:
            return json.loads((path / "model_index.json").read_text()).get("_class_name")
        except (OSError, ValueError):
            return None
    if path.is_file() and path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as reader:
                keys = list(reader.keys())
        except Exception:  # a malformed file: load_pipeline gives the one-line reason
            return None
        if is_sd3_checkpoint(keys):
            return "StableDiffusion3Pipeline"
        return "StableDiffusionXLPipeline" if any(key.startswith(SDXL_CONDITIONER_PREFIX) for key in keys) else "StableDiffusionPipeline"
    return None
