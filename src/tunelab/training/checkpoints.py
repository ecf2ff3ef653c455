"""Checkpoints: written whole to a temporary folder, then renamed, so a crash never leaves half of one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tunelab.errors import TunelabError

CHECKPOINT_PREFIX = "step-"
STEP_FILE = "step.json"  # written last: its presence marks a complete checkpoint


def checkpoint_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def complete_checkpoints(out_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary folders start with '.')."""
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / STEP_FILE).is_file()
    )


def resolve_resume(resume: str | None, out_dir: Path) -> Path | None:
    """`latest` -> the newest complete checkpoint in OUT (None if there is none yet); a path -> itself."""
    if resume is None:
        return None
    if resume == "latest":
        found = complete_checkpoints(out_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STEP_FILE).is_file():
        raise TunelabError(f"--resume {resume}: not a complete tunelab checkpoint (no {STEP_FILE})")
    return path


def save_checkpoint(out_dir: Path, step: int, keep_last: int, write_contents) -> Path:
    """`write_contents(folder)` fills the temporary folder; the rename makes it visible at once."""
    final = checkpoint_dir(out_dir) / f"{CHECKPOINT_PREFIX}{step:07d}"
    temporary = final.with_name(f".{final.name}.tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    write_contents(temporary)
    (temporary / STEP_FILE).write_text(json.dumps({"step": step}))
    if final.exists():
        _delete(final)
    os.replace(temporary, final)
    # Prune only once the new checkpoint is complete.
    if keep_last > 0:
        for old in complete_checkpoints(out_dir)[:-keep_last]:
            _delete(old)
    return final


def _delete(folder: Path) -> None:
    """Renamed out of sight first (atomic), then deleted: a kill half-way leaves a '.' folder that the next
    start removes, never a checkpoint folder with half its files."""
    doomed = folder.with_name(f".{folder.name}.deleting")
    if doomed.exists():
        shutil.rmtree(doomed)
    os.replace(folder, doomed)
    shutil.rmtree(doomed)
