"""A sweep's configuration: a comparison's shared settings, one technique, fixed training options, the space
that varies, how it is searched (a grid, or Optuna), and what "better" means.

```yaml
model: toyworld
subject: bullseye
technique: lora
training: {steps: 200, batch_size: 4, learning_rate: 5.0e-3}   # every trial
space: {rank: [1, 4, 16], alpha: [rank/2, rank]}              # what varies
search: grid                                                  # or {optuna: {trials: 12, seed: 0}}
objective: subject_fidelity
tolerance: 0.02
base: true                                                    # evaluate the untuned base too
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.comparison.config import CompareConfig, compare_config_from
from tunelab.config import checked_values, closest, read_config_file
from tunelab.errors import TunelabError
from tunelab.evaluate.protocol import METRICS
from tunelab.methods import METHODS
from tunelab.sweep.space import Axis, grid, parse_space, resolve_relative, trial_name
from tunelab.training.prepare import run_schemas

SWEEP_KEYS = ("technique", "training", "space", "search", "objective", "tolerance", "base")
LOWER_IS_BETTER = {"prior_drift"}  # every other metric: higher is better


@dataclass
class OptunaSearch:
    trials: int
    seed: int = 0
    sampler: str = "tpe"  # tpe or random


@dataclass
class SweepConfig:
    shared: dict[str, Any]  # the comparison's shared settings (model, subject, evaluation, cost)
    technique: str
    training: dict[str, Any]
    axes: dict[str, Axis]
    search: OptunaSearch | None  # None: the grid
    objective: str
    tolerance: float
    base: bool = True  # evaluate the untuned base too (prior drift is measured against it)
    where: str = "sweep config"
    compare: CompareConfig = field(init=False)

    def __post_init__(self):
        # The comparison's settings checked once (subject, metrics, embedders), with one trial that stands for all.
        first = self.trial({key: axis[0] if isinstance(axis, list) else axis.low for key, axis in self.axes.items()})
        self.compare = self.comparison([first])
        if self.objective not in self.compare.options.metrics:
            raise TunelabError(f"{self.where}: objective {self.objective!r} is not among the metrics measured "
                               f"({', '.join(self.compare.options.metrics)})")

    @property
    def maximize(self) -> bool:
        return self.objective not in LOWER_IS_BETTER

    def trial(self, params: dict[str, Any]) -> dict[str, Any]:
        """A compare experiment for these values of the space."""
        params = resolve_relative(params, self.training)
        return {"name": trial_name(self.technique, params), "technique": self.technique, **self.training, **params}

    def comparison(self, trials: list[dict[str, Any]]) -> CompareConfig:
        """The comparison these trials make (each option checked as `tunelab compare` checks it)."""
        return compare_config_from({**self.shared, "experiments": trials}, self.where)

    def grid_trials(self) -> list[dict[str, Any]]:
        return [self.trial(params) for params in grid(self.axes, self.where)]


def _search(value: Any, where: str) -> OptunaSearch | None:
    if value in (None, "grid"):
        return None
    if isinstance(value, dict) and set(value) == {"optuna"} and isinstance(value["optuna"], dict):
        settings = dict(value["optuna"])
        unknown = set(settings) - {"trials", "seed", "sampler"}
        if unknown or not isinstance(settings.get("trials"), int) or settings["trials"] < 1:
            raise TunelabError(f"{where}: search: {{optuna: {{trials: N, seed: S, sampler: tpe|random}}}} with N >= 1")
        if settings.get("sampler", "tpe") not in ("tpe", "random"):
            raise TunelabError(f"{where}: search: optuna sampler must be tpe or random")
        return OptunaSearch(**settings)
    raise TunelabError(f"{where}: 'search' must be grid or {{optuna: {{trials: N}}}}")


def sweep_config_from(data: dict[str, Any], where: str) -> SweepConfig:
    data = {str(key).replace("-", "_"): value for key, value in data.items()}
    if "experiments" in data:
        raise TunelabError(f"{where}: a sweep makes its own experiments from 'space'; no 'experiments' list")
    technique = data.pop("technique", None)
    if technique not in METHODS:
        raise TunelabError(f"{where}: 'technique' must be one of {', '.join(METHODS)}{closest(str(technique), METHODS)}")
    training = data.pop("training", None) or {}
    if not isinstance(training, dict):
        raise TunelabError(f"{where}: 'training' must map training options to values")
    training = checked_values(run_schemas(technique), training, f"{where}, training")
    axes = parse_space(data.pop("space", None), where)
    reference = {**training, **{key: axis[0] if isinstance(axis, list) else axis.low for key, axis in axes.items()}}
    for key, axis in axes.items():
        for value in axis if isinstance(axis, list) else [axis.low, axis.high]:
            if resolve_relative({key: value}, reference)[key] == value:  # 'rank/2' is checked resolved, with each trial
                checked_values(run_schemas(technique), {key: value}, f"{where}, space")
        if key in training:
            raise TunelabError(f"{where}: {key!r} is both in 'training' and in 'space'")
    search = _search(data.pop("search", None), where)
    objective = data.pop("objective", "subject_fidelity")
    if objective not in METRICS:
        raise TunelabError(f"{where}: objective {objective!r} is not a metric{closest(str(objective), METRICS)} "
                           f"(metrics: {', '.join(METRICS)})")
    tolerance = data.pop("tolerance", 0.02)
    if not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise TunelabError(f"{where}: 'tolerance' must be a number of 0 or more")
    if search is None:
        grid(axes, where)  # a range in a grid is refused here
    base = data.pop("base", True)
    if not isinstance(base, bool) or (not base and objective in LOWER_IS_BETTER):
        raise TunelabError(f"{where}: 'base' must be true or false, and true for objective prior_drift (measured against it)")
    return SweepConfig(data, technique, training, axes, search, objective, float(tolerance), base, where)


def load_sweep_config(path: str | Path) -> SweepConfig:
    return sweep_config_from(read_config_file(path), str(path))
