"""An output folder belongs to one run: refuse to mix a different run's files into it."""

from __future__ import annotations

from pathlib import Path

import yaml

from tunelab.config import write_resolved
from tunelab.errors import TunelabError

# Options that may change when the same run is continued or repeated into the same folder.
CONTINUATION_KEYS = {"steps", "overwrite", "resume", "out"}  # out: the same folder, moved or spelt another way
RUN_RECORD = "run.yaml"


def check_output_folder(out: Path, resolved: dict, overwrite: bool) -> None:
    """Refuse before any work if the folder holds another run."""
    record = out / RUN_RECORD
    if record.is_file() and not overwrite:
        previous = yaml.safe_load(record.read_text(encoding="utf-8")) or {}
        differing = sorted(
            key for key in set(previous) | set(resolved)
            if key not in CONTINUATION_KEYS and previous.get(key) != resolved.get(key)
        )
        if differing:
            raise TunelabError(
                f"{out} already holds a different run (differs in: {', '.join(differing[:6])}); "
                "choose another --out or pass --overwrite"
            )


def record_run(out: Path, resolved: dict) -> None:
    """Claim the folder once the run has really started (a typo in --model must not claim it), and
    write config.yaml, which is also a valid --config file."""
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_RECORD).write_text(yaml.safe_dump(resolved, sort_keys=True), encoding="utf-8")
    write_resolved(out / "config.yaml", {key: value for key, value in resolved.items() if key != "technique"})
