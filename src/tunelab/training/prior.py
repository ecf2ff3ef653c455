"""Class images for prior preservation: generated once with the base model, cached, reused."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tunelab.errors import TunelabError
from tunelab.models.presets import PRESETS, preset_identity
from tunelab.training.stopping import TrainingInterrupted

logger = logging.getLogger(__name__)

CLASS_IMAGE_PATTERN = "class-{index:05d}.png"


def default_cache_root() -> Path:
    return Path(os.environ.get("TUNELAB_CACHE_DIR", Path.home() / ".cache" / "tunelab")) / "class-images"


def model_identity(reference: str, seed: int) -> str:
    """What names a base model for the cache: a preset and its seed, or a file/folder and its mtime."""
    if reference in PRESETS:
        return preset_identity(reference, seed)
    path = Path(reference).expanduser().resolve()
    marker = path / "model_index.json" if path.is_dir() else path
    return f"path:{path}:mtime={marker.stat().st_mtime_ns if marker.exists() else 0}"


def cache_folder(root: Path, identity: str, class_prompt: str, resolution: int, steps: int) -> Path:
    key = json.dumps({"model": identity, "prompt": class_prompt, "resolution": resolution, "steps": steps}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return root / digest


def ensure_class_images(
    pipeline, folder: Path, class_prompt: str, count: int, resolution: int, steps: int, seed: int, show_progress: bool = True,
    stop=None,
) -> Path:
    """Generate the missing class images into `folder`; images already there are reused as they are.

    Image i always comes from seed + i, so a cache filled in several runs equals one filled at once.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompt.txt").write_text(class_prompt)
    missing = [i for i in range(count) if not (folder / CLASS_IMAGE_PATTERN.format(index=i)).is_file()]
    if not missing:
        logger.info("reusing %d class images from %s", count, folder)
        return folder
    logger.info("generating %d class images for %r into %s", len(missing), class_prompt, folder)
    pipeline.set_progress_bar_config(disable=True)
    for index in tqdm(missing, desc="class images", disable=not show_progress):
        if stop is not None and stop.requested:
            # Images written so far stay in the cache; the next run generates only the rest.
            raise TrainingInterrupted(f"stopped by {stop.signal_name} while generating class images; run again to continue")
        image = pipeline(
            class_prompt,
            num_inference_steps=steps,
            height=resolution,
            width=resolution,
            generator=torch.Generator().manual_seed(seed + index),
        ).images[0]
        final = folder / CLASS_IMAGE_PATTERN.format(index=index)
        temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp.png")  # runs filling one cache at once (a sweep)
        image.save(temporary)
        os.replace(temporary, final)  # a killed run never leaves a half-written class image
    return folder


def validate_prior_options(options) -> None:
    if options.class_prompt is None:
        if options.class_images is not None:
            raise TunelabError("--class-images needs --class-prompt (the prompt the class images show)")
        return
    if options.prior_loss_weight <= 0:
        raise TunelabError("--class-prompt turns on prior preservation; --prior-loss-weight must then be > 0")
    if options.class_images is None and options.num_class_images < 1:
        raise TunelabError("--num-class-images must be at least 1 when class images are generated")
    if options.buckets:
        raise TunelabError("--buckets with prior preservation (--class-prompt) is not supported yet")
