"""An output folder belongs to one run: refuse to mix a different run's files into it."""

from __future__ import annotations

from pathlib import Path

import yaml

from tunelab.config import write_resolved
from tunelab.errors import TunelabError

# Options that may change when the same run is continued or repeated into the same folder.
CONTINUATION_KEYS = {"steps", "overwrite", "resume", "out"}  # out: the same folder, moved or spelt another way
# Settings a resumed run may change: how long it runs and what it writes or measures on the way, not what it
# computes (validate_every: validation draws from its own generators and puts the weights back, so the trained
# weights are the same; the other validation options change what a point measures, so points would not compare).
CHANGEABLE_ON_RESUME = frozenset({
    "steps", "resume", "overwrite", "out", "sample_every", "sample_prompts", "sample_steps", "checkpoint_every",
    "keep_last", "log_with", "num_workers", "max_nonfinite_steps", "class_cache", "validate_every",
})
RUN_RECORD = "run.yaml"


def check_output_folder(out: Path, resolved: dict, overwrite: bool) -> None:
    """Refuse before any work if the folder holds another run."""
    record = out / RUN_RECORD
    if record.is_file() and not overwrite:
        previous = yaml.safe_load(record.read_text(encoding="utf-8")) or {}
        changeable = CHANGEABLE_ON_RESUME if resolved.get("resume") else CONTINUATION_KEYS
        differing = sorted(
            key for key in set(previous) | set(resolved)
            if key not in changeable and previous.get(key) != resolved.get(key)
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
