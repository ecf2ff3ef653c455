"""Run a comparison: the base and each experiment in its own process, results kept per experiment.

OUT/
  compare.json           the shared settings this folder's results belong to
  experiments/NAME/      the experiment's training output, result.json, evaluation.npz (its evaluation images),
                         samples.png (those images under their references)
  results.json report.md report.html
An experiment whose result.json exists for the same settings is not run again.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
from pathlib import Path

import torch

from tunelab.comparison.composition_study import add_composition_study
from tunelab.comparison.config import SUBJECT_KEYS, CompareConfig, CompareOptions, Experiment, base_names
from tunelab.comparison.precision_study import add_precision_study
from tunelab.comparison.report_images import write_sample_grids
from tunelab.comparison.runner import LocalRunner, check_parallel
from tunelab.errors import TunelabError
from tunelab.evaluate.dreambench_prompts import prompt_set_for_class
from tunelab.evaluate.protocol import METRICS
from tunelab.methods import method_class
from tunelab.output_path import check_output_path
from tunelab.toyworld.subjects import SUBJECTS, write_training_images

LOCK = ".compare.lock"


class FolderLock:
    """One comparison per output folder at a time; a lock left by a dead process is taken over."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK

    def __enter__(self):
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = self.path.read_text().strip()
            if owner.isdigit() and _alive(int(owner)):
                raise TunelabError(f"{self.path.parent} is in use by another compare run (pid {owner}); use another --out") from None
            self.path.unlink(missing_ok=True)
            return self.__enter__()
        with os.fdopen(descriptor, "w") as lock_file:
            lock_file.write(str(os.getpid()))
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    return True


def check_output_folder(out: Path, config: CompareConfig, rerun: bool = False) -> None:
    """Refuse to mix: a folder holds the results of one comparison's settings, and nothing else.
    With `rerun`, a comparison's folder is emptied of its experiments; any other folder is never touched."""
    marker = out / "compare.json"
    if marker.is_file():
        if rerun:
            shutil.rmtree(out / "experiments", ignore_errors=True)
        elif json.loads(marker.read_text()).get("settings") != json.loads(config.fingerprint()):
            raise TunelabError(f"{out} holds results of a comparison with other settings (model, subject, evaluation); "
                               "use another --out, or --rerun to discard them")
    elif out.exists() and any(path.name != LOCK for path in out.iterdir()):
        raise TunelabError(f"{out} is not empty and holds no comparison; use another --out")


def device_name() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def dreambench_settings(options: CompareOptions, identifier: str | None) -> dict:
    """What the worker needs for DreamBench's metrics (nothing without clip/dino): the embedders' folders, the prompt
    set and how its prompts name the subject ('sks dog')."""
    if not (options.clip or options.dino):
        return {}
    subject = SUBJECTS.get(options.subject)
    class_word = subject.class_word if subject else options.class_word
    folders = {name: str(Path(path).expanduser().resolve()) if path else None
               for name, path in (("clip", options.clip), ("dino", options.dino))}
    return {"dreambench": {**folders, "prompt_set": options.prompt_set or prompt_set_for_class(class_word),
                           "subject_noun": f"{identifier or options.identifier or 'sks'} {class_word}"}}


def experiment_spec(config: CompareConfig, experiment: Experiment | None, out: Path, device: str, data: Path,
                    base_subject: CompareOptions | None = None) -> dict:
    """What the worker needs to train and evaluate one experiment (None: the untuned base, on `base_subject` when
    given, else on the shared subject). `data`: the shared subject's training images (a subject of an
    experiment's own has its folder beside them)."""
    options = base_subject or config.options_for(experiment)
    subjects = config.subject_options()
    base = base_names(config)[subjects.index(options)]
    if options is not config.options:
        data = training_folder(options, out)
    name = experiment.name if experiment else base
    folder = out / "experiments" / name
    subject = SUBJECTS.get(options.subject)
    training = dict(experiment.training) if experiment else {}
    # The identifier in prompts: the one the technique fixes (a textual-inversion token, a weight predictor's
    # token), else the subject's.
    fixed = method_class(experiment.technique).prompt_identifier(training) if experiment else None
    identifier = fixed or (subject.token if subject else None)
    prompt = f"a {identifier} {subject.class_word}" if subject else options.prompt
    training |= {"model": options.model, "images": str(data), "out": str(folder), "prompt": prompt,
                 "overwrite": True, "log_with": "tensorboard"}
    return {
        "name": name,
        "technique": experiment.technique if experiment else "base",
        "fingerprint": experiment.fingerprint() if experiment else base_fingerprint(options, config),
        "model": options.model,
        "subject": options.subject,
        "base": base,
        "identifier": identifier,
        "training": training,
        "out": str(folder),
        "result": str(folder / "result.json"),
        "device": device,
        "evaluation": {"images_per_prompt": options.images_per_prompt, "seed": options.seed,
                       "sample_steps": options.sample_steps, "guidance": options.guidance,
                       **dreambench_settings(options, identifier)},
    }


def is_done(spec: dict) -> bool:
    """The experiment's result is there, for the same settings."""
    result = Path(spec["result"])
    if not result.is_file():
        return False
    return json.loads(result.read_text()).get("fingerprint") == spec["fingerprint"]


def base_fingerprint(options: CompareOptions, config: CompareConfig) -> str:
    """The base on the shared subject is 'base', as ever; on another subject, it depends on that subject's settings."""
    if options is config.options:
        return "base"
    return json.dumps({"base": {key: getattr(options, key) for key in SUBJECT_KEYS}}, sort_keys=True)


def training_folder(options: CompareOptions, out: Path) -> Path:
    """Where a subject's training images are: a toyworld subject's renders under OUT/data, or the folder itself."""
    subject = SUBJECTS.get(options.subject)
    return out / "data" / subject.name if subject else Path(options.subject).expanduser().resolve()


def start_folder(config: CompareConfig, out: Path, rerun: bool = False) -> Path:
    """Under the folder's lock: refuse mixing, record the settings, write each toyworld subject's training renders
    (returns the shared subject's training folder)."""
    check_output_folder(out, config, rerun)
    (out / "compare.json").write_text(json.dumps({"settings": json.loads(config.fingerprint()),
                                                  "config": dataclasses.asdict(config)}, indent=2) + "\n")
    for options in config.subject_options():
        if options.subject in SUBJECTS:
            write_training_images(SUBJECTS[options.subject], training_folder(options, out), captions=False)
    return training_folder(config.options, out)


def run_comparison(config: CompareConfig, out: Path, rerun: bool = False, progress=None, parallel: int | None = None) -> list[dict]:
    """Run what is missing (`parallel` experiments at once: comparison/runner.py), then return every record (base
    first) with prior drift filled in."""
    check_output_path(out, folder=True)  # not a file, not /
    check_parallel(parallel)  # before the folder is made
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out):
        data = start_folder(config, out, rerun)
        device = device_name()
        specs = [experiment_spec(config, None, out, device, data, subject) for subject in config.subject_options()]
        specs += [experiment_spec(config, experiment, out, device, data) for experiment in config.experiments]
        pending = [spec for spec in specs if not is_done(spec)]
        runner = LocalRunner(min(parallel, max(1, len(pending))) if parallel else None)  # no idle slots: more threads each
        begun = itertools.count(len(specs) - len(pending))  # from the workers' threads: next() is atomic

        def started(spec: dict) -> None:
            done = next(begun)
            if progress:
                progress(done, len(specs), spec["name"])

        runner.run(pending, started)
        records = [json.loads(Path(spec["result"]).read_text()) | {"subject": spec["subject"], "base": spec["base"]}
                   for spec in specs]
        add_precision_study(config, specs, records)
        add_composition_study(config, specs, records)
        if progress:
            progress(len(specs), len(specs), "report")
        write_sample_grids(records)
        return finish_records(records, config)


def prior_drift(base: dict, record: dict) -> float:
    """How much less often the tuned model's class images still look like the class than the base's."""
    return base["class_preservation"] - record["class_preservation"]


def finish_records(records: list[dict], config: CompareConfig) -> list[dict]:
    """Cost, prior drift against the base (on the record's subject), and only the metrics asked for."""
    for record in records:
        base = base_record(record, records)
        record["usd"] = round(record["train_seconds"] / 3600 * config.options.usd_per_hour, 6)
        if "class_preservation" in record and "class_preservation" in base:
            record["prior_drift"] = round(prior_drift(base, record), 4)
        for metric in METRICS:
            if metric not in config.options.metrics or metric not in record:
                record[metric] = None
    return records


def base_record(record: dict, records: list[dict]) -> dict:
    """The base evaluation on the record's subject (records made without one name none: the first record)."""
    return next((other for other in records if other["name"] == record.get("base")), records[0])
