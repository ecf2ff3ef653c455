"""Model reference -> diffusers pipeline: a preset name, a diffusers folder or a single checkpoint file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunelab.errors import TunelabError

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def load_diffusers_folder(folder: Path, torch_dtype: torch.dtype):
    import diffusers

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
    except (OSError, ValueError, EnvironmentError) as error:
        raise TunelabError(f"cannot load diffusers folder {folder}: {error}".splitlines()[0]) from None


def _quiet_progress_bars() -> None:
    # Per-component "Loading pipeline components" / "Loading weights" bars drown the run's own bar.
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def load_pipeline(reference: str | Path, *, torch_dtype: torch.dtype = torch.float32, seed: int = 0):
    """Everything a model flag accepts resolves here."""
    from tunelab.models.presets import PRESETS, build_preset

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
        from tunelab.models.single_file import load_single_file

        return load_single_file(path, torch_dtype=torch_dtype)
    raise TunelabError(
        f"model not found: {reference!r} is not a preset ({', '.join(sorted(PRESETS))}), a diffusers folder or a checkpoint file"
    )
