"""Checkpoints: written whole to a temporary folder, then renamed, so a crash never leaves half of one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

CHECKPOINT_PREFIX = "step-"


def checkpoint_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def complete_checkpoints(out_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary folders start with '.')."""
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def save_checkpoint(accelerator, method, out_dir: Path, step: int, metadata: dict[str, str], keep_last: int) -> Path:
    final = checkpoint_dir(out_dir) / f"{CHECKPOINT_PREFIX}{step:07d}"
    temporary = final.with_name(f".{final.name}.tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    accelerator.save_state(str(temporary / "state"))  # model, optimizer, scheduler, RNG
    method.save(temporary, metadata)
    (temporary / "step.json").write_text(json.dumps({"step": step}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    # Prune only once the new checkpoint is complete.
    if keep_last > 0:
        for old in complete_checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(old)
    return final
