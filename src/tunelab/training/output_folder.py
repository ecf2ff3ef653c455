"""An output folder belongs to one run, for the run's whole life.

- A lock (`.tunelab.lock`, an flock held while the run lives) refuses a second run on the same folder at
  once, naming the holder's pid and host. The kernel drops the lock when its process dies, so a lock
  left by a killed run is simply taken over (the file stays; only the flock counts).
- A marker (`.tunelab-run`) says tunelab made the folder and how far its last finished run went. A
  non-empty folder without it (nor a run record of an older tunelab) is someone else's: refused
  unless --overwrite. A finished run is never replaced by a shorter one (fewer --steps) without
  --overwrite.
- Leftovers of an interrupted save or checkpoint prune (temporary files and folders, a checkpoint
  folder half deleted) are removed on the next start, under the lock.
- A run that fails before it wrote a checkpoint or its artifact leaves the folder's records as they
  were, so the corrected command is not refused as "a different run".
- `--resume` from a checkpoint made with other settings is refused, naming them (checkpoints record
  their run's settings in `settings.json`): the resumed run is the run its records say it is.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tunelab.errors import TunelabError
from tunelab.output_path import check_output_path
from tunelab.training.checkpoints import CHECKPOINT_PREFIX, STEP_FILE, checkpoint_dir, complete_checkpoints, resolve_resume
from tunelab.training.output import CHANGEABLE_ON_RESUME, RUN_RECORD, check_output_folder

logger = logging.getLogger(__name__)

LOCK_FILE = ".tunelab.lock"
MARKER_FILE = ".tunelab-run"
SETTINGS_FILE = "settings.json"  # in each checkpoint: the resolved configuration of the run that wrote it
RECORDS = (RUN_RECORD, "config.yaml")  # what starting a run writes; put back if it fails before any result
_TEMPORARY_FILE = re.compile(r"^\..+\.tmp-\d+$")  # formats/safetensors_io.py's atomic-write names
_OWN_ENTRIES = {LOCK_FILE, MARKER_FILE}


@contextmanager
def claimed_output_folder(out: str | Path, resolved: dict, *, overwrite: bool) -> Iterator[Path]:
    """Hold `out` for one training run: checked, locked, cleaned, marked; released when the run ends."""
    folder = check_output_path(out, folder=True)
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch, the main process holds it for all
        yield folder
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        try:
            _check_ownership(folder, resolved, overwrite)
            check_output_folder(folder, resolved, overwrite)
            check_resume_settings(resolved, folder)
        except TunelabError:
            if created:
                shutil.rmtree(folder, ignore_errors=True)  # made only to hold the lock
            raise
        remove_leftovers(folder)
        marker = _read_marker(folder)
        _write_marker(folder, marker)
        before = {name: _read_bytes(folder / name) for name in RECORDS}
        started = time.time()
        try:
            yield folder
        except BaseException:
            if not _wrote_results(folder, started):
                _put_back(folder, before)
                if created and {entry.name for entry in folder.iterdir()} <= _OWN_ENTRIES:
                    shutil.rmtree(folder, ignore_errors=True)  # nothing of the run is left: no folder either
            raise
        _write_marker(folder, {**marker, "finished_steps": resolved.get("steps")})


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    path = folder / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise TunelabError(f"{folder} is in use by another tunelab run ({holder}); wait for it to end or choose "
                               "another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing the descriptor releases the flock


def _check_ownership(folder: Path, resolved: dict, overwrite: bool) -> None:
    entries = [entry.name for entry in folder.iterdir() if entry.name not in _OWN_ENTRIES]
    made_by_tunelab = (folder / MARKER_FILE).is_file() or (folder / RUN_RECORD).is_file()
    if overwrite or not entries:
        return
    if not made_by_tunelab:
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise TunelabError(f"{folder} holds files tunelab did not write ({shown}); choose another --out, or pass "
                           "--overwrite to write into it anyway")
    finished = _read_marker(folder).get("finished_steps")
    steps = resolved.get("steps")
    if isinstance(finished, int) and isinstance(steps, int) and steps < finished:
        raise TunelabError(f"{folder} holds a finished run of {finished} steps; --steps {steps} would replace it with a "
                           "shorter one (choose another --out, or pass --overwrite)")


def check_resume_settings(resolved: dict, folder: Path) -> None:
    """Refuse a resume from a checkpoint whose run had other settings (not only its length)."""
    checkpoint = resolve_resume(resolved.get("resume"), folder)
    if checkpoint is None:
        return
    recorded = _read_json(checkpoint / SETTINGS_FILE)
    if recorded is None:
        logger.warning("checkpoint %s records no settings (an older tunelab); resuming it unchecked", checkpoint)
        return
    differing = sorted(key for key in set(recorded) | set(resolved)
                       if key not in CHANGEABLE_ON_RESUME and recorded.get(key) != resolved.get(key))
    if differing:
        shown = ", ".join(f"{key} {recorded.get(key)!r} -> {resolved.get(key)!r}" for key in differing[:4])
        raise TunelabError(f"--resume {checkpoint}: that run had other settings ({shown}{', ...' if len(differing) > 4 else ''}); "
                           "resume with the same settings, or start a new run")


def record_checkpoint_settings(checkpoint_folder: Path, resolved_json: str) -> None:
    """The run's resolved configuration (JSON) beside its checkpoint, for `check_resume_settings`."""
    (Path(checkpoint_folder) / SETTINGS_FILE).write_text(resolved_json, encoding="utf-8")


def remove_leftovers(folder: Path) -> list[Path]:
    """Temporary files and folders of interrupted writes, and checkpoint folders a killed prune left half
    deleted (no step.json). Only called under the lock: no other run is writing them."""
    removed = []
    checkpoints = checkpoint_dir(folder)
    if checkpoints.is_dir():
        for entry in checkpoints.iterdir():
            temporary = entry.name.startswith(".")
            incomplete = entry.name.startswith(CHECKPOINT_PREFIX) and not (entry / STEP_FILE).is_file()
            if entry.is_dir() and (temporary or incomplete):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    for root, _, files in os.walk(folder):
        for name in files:
            if _TEMPORARY_FILE.match(name):
                (Path(root) / name).unlink(missing_ok=True)
                removed.append(Path(root) / name)
    if removed:
        logger.info("removed %d leftover(s) of an interrupted run in %s: %s", len(removed), folder,
                    ", ".join(str(path.relative_to(folder)) for path in removed[:5]))
    return removed


def _wrote_results(folder: Path, since: float) -> bool:
    """Whether this run left a checkpoint that its records now describe."""
    return any((path / STEP_FILE).stat().st_mtime >= since for path in complete_checkpoints(folder))


def _put_back(folder: Path, before: dict[str, bytes | None]) -> None:
    for name, content in before.items():
        path = folder / name
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(content)


def _read_marker(folder: Path) -> dict:
    return _read_json(folder / MARKER_FILE) or {}


def _write_marker(folder: Path, marker: dict) -> None:
    (folder / MARKER_FILE).write_text(json.dumps({**marker, "made_by": "tunelab"}) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None
