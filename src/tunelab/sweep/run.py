"""Run a sweep: its trials are a comparison's experiments, in the comparison's folder layout and under its rules
(one comparison per folder, a trial whose result.json exists for the same settings is not run again).

Trials run in parallel: on this machine one per GPU (each worker process sees only its GPU), or on a Ray
cluster with --ray ADDRESS (Ray places them; tunelab keeps no scheduler of its own).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import optuna

from tunelab.comparison.config import CompareConfig
from tunelab.comparison.report_images import write_sample_grids
from tunelab.comparison.run import FolderLock, device_name, experiment_spec, finish_records, is_done, start_folder
from tunelab.comparison.runner import LocalRunner, check_parallel
from tunelab.errors import TunelabError
from tunelab.sweep.config import SweepConfig
from tunelab.sweep.space import Range

Progress = Callable[[int, int, str], None]


def make_runner(parallel: int | None, ray_address: str | None):
    check_parallel(parallel)
    if ray_address is None:
        return LocalRunner(parallel)
    try:
        from tunelab.sweep.ray_runner import RayRunner  # deferred: Ray is needed only for --ray
    except ModuleNotFoundError as error:
        raise TunelabError(f"--ray needs Ray ({error}); install it with `pip install ray`") from None
    return RayRunner(ray_address, parallel)


class Trials:
    """The trials of one sweep folder, run through a runner and read back."""

    def __init__(self, config: SweepConfig, out: Path, data: Path, runner, progress: Progress):
        self.config, self.out, self.data, self.runner, self.progress = config, out, data, runner, progress
        self.device = device_name()
        self.specs: dict[str, dict] = {}  # name -> spec, in the order first asked

    def run(self, comparison: CompareConfig, include_base: bool = False) -> list[dict]:
        """Run what is missing of these experiments (and the base); their records, in order."""
        specs = [experiment_spec(comparison, None, self.out, self.device, self.data)] if include_base else []
        specs += [experiment_spec(comparison, experiment, self.out, self.device, self.data) for experiment in comparison.experiments]
        for spec in specs:
            self.specs.setdefault(spec["name"], spec)
        pending = [spec for spec in specs if not is_done(spec)]
        self.progress(len(self.specs) - len(pending), len(self.specs), ", ".join(spec["name"] for spec in pending) or "done")
        self.runner.run(pending)
        return [json.loads(Path(spec["result"]).read_text()) for spec in specs]


def grid_search(config: SweepConfig, trials: Trials) -> None:
    trials.run(config.comparison(config.grid_trials()), include_base=config.base)


def distribution(axis) -> optuna.distributions.BaseDistribution:
    if isinstance(axis, Range) and axis.integer:
        return optuna.distributions.IntDistribution(axis.low, axis.high, log=axis.log, step=axis.step or 1)
    if isinstance(axis, Range):
        return optuna.distributions.FloatDistribution(axis.low, axis.high, log=axis.log, step=axis.step)
    return optuna.distributions.CategoricalDistribution(axis)


def optuna_search(config: SweepConfig, trials: Trials) -> None:
    """Optuna's ask-and-tell, as many trials at once as the runner runs side by side. Seeded, and every told
    value is a reused result on a rerun, so a rerun with the same --parallel asks the same trials again."""
    search = config.search
    sampler = (optuna.samplers.TPESampler(seed=search.seed) if search.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=search.seed))
    study = optuna.create_study(direction="maximize" if config.maximize else "minimize", sampler=sampler)
    distributions = {key: distribution(axis) for key, axis in config.axes.items()}
    told = 0
    while told < search.trials:
        batch = [study.ask(distributions) for _ in range(min(trials.runner.width, search.trials - told))]
        experiments = {trial.number: config.trial(trial.params) for trial in batch}
        unique = list({experiment["name"]: experiment for experiment in experiments.values()}.values())
        records = {record["name"]: record for record in trials.run(config.comparison(unique), include_base=config.base and told == 0)}
        for trial in batch:
            value = records[experiments[trial.number]["name"]].get(config.objective)
            if value is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, value)
        told += len(batch)


def run_sweep(config: SweepConfig, out: Path, *, rerun: bool = False, parallel: int | None = None,
              ray_address: str | None = None, progress: Progress | None = None) -> list[dict]:
    """Run what is missing; every record (the base first unless `base: false`, then each trial once, with its
    `params`), with cost and prior drift."""
    out = out.expanduser().resolve()  # Ray workers start elsewhere
    out.mkdir(parents=True, exist_ok=True)
    runner = make_runner(parallel, ray_address)
    try:
        with FolderLock(out):
            data = start_folder(config.compare, out, rerun)
            trials = Trials(config, out, data, runner, progress or (lambda done, total, name: None))
            (optuna_search if config.search else grid_search)(config, trials)
            specs = list(trials.specs.values())
            records = [json.loads(Path(spec["result"]).read_text()) for spec in specs]
            write_sample_grids(records)
            for record, spec in zip(records, specs):
                if spec["name"] != "base":
                    record["params"] = {key: spec["training"][key] for key in config.axes}  # the trial's settings
            if not config.base:
                for record in records:
                    record.pop("class_preservation", None)  # prior drift is measured against the base
            return finish_records(records, config.compare)  # the base (when evaluated) first
    finally:
        runner.close()
