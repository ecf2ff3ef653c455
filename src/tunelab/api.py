"""tunelab from Python: train, generate, compare and the demo, taking the options the command line takes.

The command line is a thin layer over these functions (it only parses arguments and prints), so a
notebook and a terminal run the same code. Options are keyword arguments, checked as strictly as a
config file: a misspelt one raises `TunelabError` naming the nearest valid option.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from tunelab.comparison.config import CompareConfig, compare_config_from, load_compare_config
from tunelab.comparison.demo_settings import demo_config
from tunelab.comparison.report import write_reports
from tunelab.comparison.run import run_comparison
from tunelab.comparison.runner import available_cores
from tunelab.config import checked_values, closest, resolve
from tunelab.errors import Interrupted, TunelabError
from tunelab.evaluate.dreambench import embedding_scores
from tunelab.evaluate.embedders import ClipEmbedder, DinoEmbedder
from tunelab.evaluate.image_folders import image_paths, load_images, prompts_beside
from tunelab.evaluate.validation_scores import validation_scores
from tunelab.generation.grid import generate_grid
from tunelab.generation.png_info import a1111_parameters, read_options, save_png
from tunelab.generation.prompt_tags import extract_tags
from tunelab.generation.session import (
    GenerateOptions,
    apply_image_options,
    image_record,
    image_seeds,
    prepare,
    render,
    rendered_images,
    text_inputs,
)
from tunelab.machine import describe
from tunelab.methods import METHODS, generation_methods
from tunelab.sweep.config import SweepConfig, load_sweep_config, sweep_config_from
from tunelab.sweep.report import summary, write_sweep_reports
from tunelab.sweep.run import run_sweep
from tunelab.training.checkpoints import complete_checkpoints
from tunelab.training.launch import inside_launched_process
from tunelab.training.loop import TrainingProgress
from tunelab.training.loop import train as train_loop
from tunelab.training.output import check_output_folder
from tunelab.training.prepare import prepare_run, run_schemas


@dataclass
class TrainResult:
    artifact: Path | None  # the trained LoRA / embedding / hypernetwork file or model folder; None when stopped
    config: dict[str, Any]  # the resolved configuration (what OUT/config.yaml records, plus the technique)
    step: int  # the last optimizer step done
    loss: float | None  # the loss of that step
    samples: list[Path] = field(default_factory=list)  # sample images written during the run
    stopped: bool = False  # True when on_progress asked the run to stop
    checkpoint: Path | None = None  # the newest checkpoint (continue with resume="latest")


def _values(where: str, schemas, given: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments -> option values, refusing unknown names with a suggestion; None means 'not given'."""
    values = {key: value for key, value in given.items() if value is not None}
    checked_values(schemas, values, where)
    return values


def _checked_run(technique: str, config, given: dict[str, Any]):
    """The prepared run, every option checked (no model loaded yet); a TunelabError names what is refused."""
    if technique not in METHODS:
        raise TunelabError(f"unknown technique {technique!r}{closest(technique, METHODS)} (techniques: {', '.join(METHODS)})")
    values = _values("tunelab.train", run_schemas(technique), given)
    run = prepare_run(technique, {key: str(value) if isinstance(value, Path) else value for key, value in values.items()},
                      config)
    if run.options.num_processes > 1 and not inside_launched_process():
        raise TunelabError("num_processes > 1 starts training processes through the command line: run `tunelab train`")
    check_output_folder(Path(run.options.out), run.resolved, run.options.overwrite)
    validation_scores(run.options, run.method)  # --keep-best / --validation-subject checked before loading
    return run


def check_train(technique: str, *, model: str | None = None, images: str | Path | None = None, out: str | Path | None = None,
                config: str | Path | None = None, **options) -> dict[str, Any]:
    """Check a `train` call's options without training (nothing is loaded): the resolved configuration, or
    the TunelabError `train` would raise for them (a UI shows it before queueing the run)."""
    return _checked_run(technique, config, {"model": model, "images": images, "out": out, **options}).resolved


def train(technique: str, *, model: str | None = None, images: str | Path | None = None, out: str | Path | None = None,
          config: str | Path | None = None, on_progress: Callable[[TrainingProgress], None] | None = None,
          **options) -> TrainResult:
    """Train `technique` (lora, dreambooth, ...) as `tunelab train TECHNIQUE` does, in this process.

    `options` are the command's options by their Python names (learning_rate=1e-4, rank=8); `config`
    a YAML/TOML file with more (keywords win). `on_progress(progress)` is called after every
    optimizer step; `progress.request_stop()` ends the run there with a checkpoint."""
    run = _checked_run(technique, config, {"model": model, "images": images, "out": out, **options})
    out_dir = Path(run.options.out)
    seen: list[TrainingProgress] = []

    def report(progress: TrainingProgress) -> None:
        seen.append(progress)
        if on_progress is not None:
            on_progress(progress)

    stopped = False
    try:
        artifact = train_loop(run.options, run.method, run.resolved, run.family_options, on_progress=report,
                              validation_metrics=validation_scores(run.options, run.method))
    except Interrupted:
        if not (seen and seen[-1]._stop.requested and on_progress is not None):
            raise  # a signal (Ctrl-C) ends the program as it would the command
        artifact, stopped = None, True
    checkpoints = complete_checkpoints(out_dir)
    return TrainResult(
        artifact=Path(artifact) if artifact is not None else None,
        config=run.resolved,
        step=seen[-1].step if seen else 0,
        loss=seen[-1].loss if seen else None,
        samples=[path for progress in seen for path in progress.samples],
        stopped=stopped,
        checkpoint=checkpoints[-1] if checkpoints else None,
    )


# What a PNG's record may not decide: where images are written, which folders are read, how many are made.
NOT_FROM_PNG = {"out", "from_png", "adapters_dir", "grid_x", "grid_y", "count", "seeds"}


def options_from_png(path: Path, adapters_dir: str | None = None) -> dict[str, Any]:
    """The generation parameters a PNG records, for `from_png`; never paths to write or folders to read:
    adapter files it names are taken by file name from this run's `adapters_dir`."""
    recorded = read_options(path)
    known = {field.name for field in dataclasses.fields(GenerateOptions)}
    unknown = sorted(set(recorded) - known)
    if unknown:
        raise TunelabError(f"--from-png: {path} records options tunelab does not know ({', '.join(unknown)})")
    options = {key: value for key, value in recorded.items() if key not in NOT_FROM_PNG}
    if "empty_negative" not in recorded:  # made before --empty-negative: weighted prompts encoded the empty text
        options["empty_negative"] = "encode" if recorded.get("prompt_weighting", True) else "model"
    for method in generation_methods():
        field_name = method.generate_flag.field
        if options.get(field_name):
            options[field_name] = [_adapter_by_name(method, str(spec), adapters_dir, path) for spec in options[field_name]]
    return options


def _adapter_by_name(method, spec: str, adapters_dir: str | None, png: Path) -> str:
    """A recorded 'PATH[:VALUE]' -> the same file name (and value) in this run's adapters folder."""
    recorded_path, _ = method.parse_spec(spec)
    rest = spec[len(str(recorded_path)):] if spec.startswith(str(recorded_path)) else ""
    if adapters_dir is None:
        raise TunelabError(f"--from-png: {png} was made with {method.title} file {recorded_path.name}; pass --adapters-dir "
                           "with the folder that holds it (a PNG never decides which folders are read)")
    return str(Path(adapters_dir).expanduser() / recorded_path.name) + rest


def generate_options(values: dict[str, Any], config: str | Path | None = None):
    """GenerateOptions from keyword values (and a config file); `from_png` fills in what was not given."""
    values = {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}
    if values.get("from_png"):
        values = {**options_from_png(Path(values["from_png"]), values.get("adapters_dir")), **values}  # what is given wins
    (options,) = resolve([GenerateOptions], values, config)
    return options


def _with_record(image: Image.Image, record: dict) -> Image.Image:
    """The parameters stored in the PNG (A1111's line and tunelab's record) also ride on the image."""
    image.info["parameters"] = a1111_parameters(record)
    image.info["tunelab"] = record
    return image


def generate(*, model: str | None = None, prompt: str | None = None, out: str | Path | None = None,
             config: str | Path | None = None, **options) -> list[Image.Image]:
    """Images as `tunelab generate` makes them: one per seed (or a grid's cells, then the grid).

    With `out`, the PNGs are written as the command writes them (with their parameters); each
    returned image carries its parameters in `image.info` either way."""
    values = _values("tunelab.generate", [GenerateOptions], {"model": model, "prompt": prompt, **options})
    options = generate_options({**values, "out": str(out) if out is not None else ""}, config)
    if options.grid_x is not None:
        if not options.out:
            raise TunelabError("a grid is written to files: pass out=")
        return [Image.open(path) for path in generate_grid(options)]
    images = []
    for image, record, path in rendered_images(prepare(options), options):
        if options.out:
            save_png(image, path, record)
        images.append(_with_record(image, record))
    return images


# Options that decide what is loaded; a Generator keeps them for its life.
_LOADED = {"model", "precision", "device", "adapters_dir", "vae_tiling", "vae_slicing", "cpu_offload", "from_png"}


class Generator:
    """A model loaded once (with its LoRAs, embeddings, hypernetworks) for many images: a notebook's way in.

    `Generator("tiny-sd", lora=["toy.safetensors:0.8"])("a photo of sks toy", seeds=[1, 2])` gives the
    images `tunelab generate` gives for the same options."""

    def __init__(self, model: str, **options):
        values = _values("tunelab.Generator", [GenerateOptions], {"model": model, **options})
        self.options = generate_options({**values, "prompt": values.get("prompt", ""), "out": ""})
        self._adapter_options = {key for key in values if key not in _LOADED}
        self.session = prepare(self.options)

    def __call__(self, prompt: str, **options) -> list[Image.Image]:
        values = _values("Generator()", [GenerateOptions], options)
        fixed = sorted(key for key in values if key in _LOADED or key in self._loaded_adapter_fields())
        if fixed:
            raise TunelabError(f"{', '.join(fixed)} decide what is loaded: pass them when making the Generator")
        if extract_tags(prompt)[1]:
            raise TunelabError("prompt tags like <lora:NAME:W> load files: pass the adapters when making the Generator")
        options = replace(self.options, prompt=prompt, **values)
        apply_image_options(self.session, options)
        self.session.prompt_text = prompt
        prompt_inputs = text_inputs(self.session, options)
        return [_with_record(render(self.session, options, seed, prompt_inputs), image_record(self.session, options, seed))
                for seed in image_seeds(options)]

    def _loaded_adapter_fields(self) -> set[str]:
        return {attached.method.generate_flag.field for attached in self.session.attached}

    def close(self) -> None:
        """Take the adapters off and let the model go."""
        self.session.detach()
        self.session = None


def _comparison(config: CompareConfig | str | Path | dict) -> CompareConfig:
    if isinstance(config, CompareConfig):
        return config
    if isinstance(config, dict):
        return compare_config_from(config, "compare config")
    return load_compare_config(config)


def compare(config: CompareConfig | str | Path | dict, *, out: str | Path, rerun: bool = False,
            usd_per_hour: float | None = None, title: str = "tunelab compare",
            progress: Callable[[int, int, str], None] | None = None, parallel: int | None = None) -> Path:
    """Run a comparison (a config file, a dict of the same, or a CompareConfig) into `out`; returns the
    HTML report. `progress(done, total, name)` follows the experiments; `parallel` of them run at once (default:
    one per GPU, one at a time on the CPU), each on its share of the cores."""
    config = _comparison(config)
    if usd_per_hour is not None:
        config = replace(config, options=replace(config.options, usd_per_hour=usd_per_hour))
    out = Path(out)
    records = run_comparison(config, out, rerun=rerun, progress=progress or (lambda done, total, name: None),
                             parallel=parallel)
    threads = max(record.get("torch_threads") or 0 for record in records) or torch.get_num_threads()
    subjects = [options.subject for options in config.subject_options()]
    notes = [f"Model {config.options.model}, subject{'s' * (len(subjects) > 1)} {', '.join(subjects)}; "
             f"cost at ${config.options.usd_per_hour}/h.",
             f"Machine: {describe(threads)}{side_by_side(parallel)}."]
    return write_reports(records, out, title, notes)["html"]


def side_by_side(parallel: int | None) -> str:
    """The report's word on experiments that ran at once (their times are each on its share of the cores)."""
    return f"; up to {parallel} experiments at once, each on its share of the cores" if parallel and parallel > 1 else ""


def sweep(config: SweepConfig | str | Path | dict, *, out: str | Path, rerun: bool = False, usd_per_hour: float | None = None,
          parallel: int | None = None, ray: str | None = None, title: str = "tunelab sweep",
          progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Run a sweep (a config file, a dict of the same, or a SweepConfig) into `out`: a grid or an Optuna search,
    each trial a comparison experiment, `parallel` at once (one per GPU by default) or on the Ray cluster at `ray`
    (`local` starts one here). Returns the HTML report (frontiers and the recommended setting)."""
    if isinstance(config, dict):
        config = sweep_config_from(config, "sweep config")
    elif not isinstance(config, SweepConfig):
        config = load_sweep_config(config)
    if usd_per_hour is not None:
        config = replace(config, shared={**config.shared, "usd_per_hour": usd_per_hour})
    out = Path(out)
    records = run_sweep(config, out, rerun=rerun, parallel=parallel, ray_address=ray, progress=progress)
    options = config.compare.options
    notes = [f"{config.technique} on model {options.model}, subject {options.subject}; objective {config.objective}; "
             f"cost at ${options.usd_per_hour}/h.", f"Machine: {describe(torch.get_num_threads())}."]
    return write_sweep_reports(summary(records, config), out, title, notes)["html"]


def demo(*, out: str | Path, subject: str = "bullseye", scale: float = 1.0, rerun: bool = False,
         usd_per_hour: float | None = None, progress: Callable[[int, int, str], None] | None = None,
         with_hyper: bool = False, parallel: int | None = None) -> Path:
    """`tunelab demo`: the four techniques on a built-in toyworld subject (`with_hyper`: and the shipped weight
    predictor's LoRA, predicted and refined); returns the HTML report."""
    if not 0 < scale <= 10:
        raise TunelabError(f"--scale must be in (0, 10], got {scale}")
    learners = "four techniques and a predicted LoRA" if with_hyper else "four techniques"
    # The toyworld base is small: by default one experiment per core (a tiny model gains little from more threads).
    if parallel is None and not torch.cuda.is_available():
        parallel = available_cores()
    return compare(demo_config(subject, scale, with_hyper), out=out, rerun=rerun, usd_per_hour=usd_per_hour, parallel=parallel,
                   progress=progress, title=f"tunelab demo: {learners} learn the toyworld {subject}")


def evaluate(*, images: str | Path, reference: str | Path, prompt: str | None = None, clip: str | Path | None = None,
             dino: str | Path | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """DreamBench's CLIP-I, CLIP-T and DINO of the generated images in `images` against the real ones in
    `reference` (docs/evaluation.md). Each image's prompt is `prompt`, else its same-name .txt (CLIP-T only);
    `clip` and `dino` are local model folders, either optional. Returns (and with `out`, writes as JSON)
    `clip_i`, `clip_t`, `dino` (None when not measured) and `details` (backbone, images and pairs per metric)."""
    if clip is None and dino is None:
        raise TunelabError("nothing to measure: give a CLIP model folder (--clip), a DINO one (--dino), or both")
    generated_paths, reference_paths = image_paths(images, "generated images"), image_paths(reference, "reference images")
    prompts = prompts_beside(generated_paths, prompt) if clip is not None else None
    clip_embedder = ClipEmbedder(clip) if clip is not None else None
    dino_embedder = DinoEmbedder(dino) if dino is not None else None
    record = embedding_scores(load_images(generated_paths), load_images(reference_paths), prompts, clip_embedder, dino_embedder)
    record |= {"images": str(images), "reference": str(reference)}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
    return record
