"""The comparison's configuration: shared settings, then a list of experiments (technique + training options)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import checked_values, closest, option, read_config_file
from tunelab.data.folder import scan_image_folder
from tunelab.errors import TunelabError
from tunelab.evaluate.protocol import METRICS
from tunelab.evaluate.sampling import GUIDANCE, STEPS
from tunelab.methods import METHODS
from tunelab.toyworld.subjects import SUBJECTS
from tunelab.training.prepare import run_schemas

# Training options the bench sets itself, the same for every experiment.
SET_BY_COMPARE = ("model", "images", "out", "prompt", "resume", "overwrite", "num_processes", "log_with")


@dataclass
class CompareOptions:
    model: str = option("base model for every experiment (preset, diffusers folder or checkpoint)", default="toyworld")
    subject: str = option(
        "toyworld subject the techniques learn (bullseye, checker, flag), or a folder of your own images "
        "(then only time, memory, size and cost are measured: the quality metrics need toyworld's renderer)",
        default="bullseye",
    )
    prompt: str | None = option("instance prompt for a folder subject, e.g. 'a photo of sks dog'", default=None)
    metrics: list[str] = option(f"quality metrics to report ({', '.join(METRICS)})", default_factory=lambda: list(METRICS))
    images_per_prompt: int = option("images per evaluation prompt (same seeds for every experiment)", default=8)
    sample_steps: int = option("sampling steps for evaluation images", default=STEPS)
    guidance: float = option("classifier-free guidance for evaluation images", default=GUIDANCE)
    seed: int = option("first evaluation seed", default=1000)
    usd_per_hour: float = option("machine price for the cost column (the study's RTX 3090 rate)", default=0.29)


@dataclass
class Experiment:
    name: str
    technique: str
    training: dict[str, Any] = field(default_factory=dict)  # `tunelab train <technique>` options, checked

    def fingerprint(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclass
class CompareConfig:
    options: CompareOptions
    experiments: list[Experiment]

    def fingerprint(self) -> str:
        """What makes results comparable: the shared settings (experiments may be added or changed one by one)."""
        return json.dumps(dataclasses.asdict(self.options), sort_keys=True)


def _experiment(entry: Any, index: int, where: str) -> Experiment:
    if not isinstance(entry, dict):
        raise TunelabError(f"{where}: experiment {index + 1} must be a mapping with 'name' and 'technique'")
    entry = dict(entry)
    name, technique = str(entry.pop("name", "")).strip(), entry.pop("technique", None)
    if not name or technique is None:
        raise TunelabError(f"{where}: experiment {index + 1} needs a 'name' and a 'technique'")
    if technique not in METHODS:
        raise TunelabError(f"{where}: experiment {name!r}: unknown technique {technique!r}{closest(str(technique), METHODS)} "
                           f"(techniques: {', '.join(METHODS)})")
    for key in entry:
        if str(key).replace("-", "_") in SET_BY_COMPARE:
            raise TunelabError(f"{where}: experiment {name!r}: {key!r} is set by the comparison for every experiment")
    training = checked_values(run_schemas(technique), entry, f"{where}, experiment {name!r}")
    return Experiment(name, technique, training)


def _check_subject(options: CompareOptions, where: str) -> None:
    if options.subject in SUBJECTS:
        return
    folder = Path(options.subject).expanduser()
    if not folder.is_dir():
        raise TunelabError(f"{where}: subject {options.subject!r} is neither a toyworld subject ({', '.join(SUBJECTS)}) nor a folder")
    if not scan_image_folder(folder, options.prompt):
        raise TunelabError(f"{where}: subject folder {folder} holds no images")
    if not options.prompt:
        raise TunelabError(f"{where}: a folder subject needs 'prompt', the instance prompt (e.g. 'a photo of sks dog')")


def load_compare_config(path: str | Path) -> CompareConfig:
    data = read_config_file(path)
    return compare_config_from(data, str(path))


def compare_config_from(data: dict[str, Any], where: str) -> CompareConfig:
    data = dict(data)
    entries = data.pop("experiments", None)
    if not entries or not isinstance(entries, list):
        raise TunelabError(f"{where}: 'experiments' must be a non-empty list of experiments")
    options = CompareOptions(**checked_values([CompareOptions], data, where))
    unknown = [metric for metric in options.metrics if metric not in METRICS]
    if unknown:
        raise TunelabError(f"{where}: unknown metric {unknown[0]!r}{closest(unknown[0], METRICS)} (metrics: {', '.join(METRICS)})")
    _check_subject(options, where)
    experiments = [_experiment(entry, index, where) for index, entry in enumerate(entries)]
    names = [experiment.name for experiment in experiments]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate or "base" in names:
        raise TunelabError(f"{where}: experiment names must be unique and not 'base' ({duplicate or 'base'!r})")
    return CompareConfig(options, experiments)
