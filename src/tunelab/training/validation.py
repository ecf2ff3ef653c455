"""Validation during training: a loss on held-out images at fixed timesteps and noise, and any scores a
layer above supplies (toyworld's subject fidelity, ...), every --validate-every steps and at the last step.

Every draw (VAE sample, timestep, noise) comes from generators seeded by --validation-seed and the image's
place alone, never from the training's random state: validating changes nothing in the run, and the same
weights give the same loss at every step of every run with that seed, so points compare across steps and
runs. Each point goes to OUT/validation.json and to the run's TensorBoard log.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from tunelab.data.dataset import ImageCaptionDataset
from tunelab.data.folder import ImageItem, scan_image_folder
from tunelab.errors import TunelabError
from tunelab.training.best import BestArtifact
from tunelab.training.options import TrainOptions

VALIDATION_LOSS = "validation_loss"
RECORD = "validation.json"
SPLIT_STREAM = 0x5A1D  # keeps the held-out choice apart from every other use of the validation seed


@dataclass(frozen=True)
class ValidationMetric:
    """A score of the model as it is at a validation step, measured by a layer above training (evaluate/):
    `measure(pipeline)` gets the run's pipeline with the current weights in place."""

    name: str
    higher_is_better: bool
    measure: Callable[[Any], float]


def check_validation_options(options: TrainOptions) -> None:
    """What no run can use, before any model loads (the names a layer above scores are checked there)."""
    if options.validate_every < 0:
        raise TunelabError(f"--validate-every must be 0 or more, got {options.validate_every}")
    if not 0.0 <= options.validation_split < 1.0:
        raise TunelabError(f"--validation-split must be at least 0 and below 1, got {options.validation_split}")
    if options.validation_images is not None and options.validation_split:
        raise TunelabError("--validation-images and --validation-split both give validation images; choose one")
    if options.validation_images is not None and not Path(options.validation_images).expanduser().is_dir():
        raise TunelabError(f"--validation-images {options.validation_images} is not a folder")
    if options.validation_timesteps < 1 or options.validation_samples < 1:
        raise TunelabError("--validation-timesteps and --validation-samples must be at least 1")
    has_images = options.validation_images is not None or options.validation_split > 0
    if options.validate_every and not (has_images or options.validation_subject):
        raise TunelabError("--validate-every needs something to validate: --validation-images DIR, "
                           "--validation-split FRACTION or --validation-subject NAME")
    if (has_images or options.keep_best) and not options.validate_every:
        raise TunelabError("validation images and --keep-best need --validate-every N (steps between validations)")
    if options.keep_best == VALIDATION_LOSS and not has_images:
        raise TunelabError("--keep-best validation_loss needs --validation-images DIR or --validation-split FRACTION")


def held_out(items: list[ImageItem], fraction: float, seed: int) -> list[ImageItem]:
    """The images --validation-split keeps out of training: a share of them, chosen by the validation seed."""
    if not fraction:
        return []
    ordered = sorted(items, key=lambda item: str(item.path))
    count = max(1, round(fraction * len(ordered)))
    if count >= len(ordered):
        raise TunelabError(f"--validation-split {fraction} leaves no training image ({len(ordered)} image(s) in all)")
    order = np.random.default_rng([seed, SPLIT_STREAM]).permutation(len(ordered))
    return [ordered[index] for index in sorted(order[:count])]


def held_out_paths(options: TrainOptions, prompt: str | None) -> set[Path]:
    """Training images the run must not train on (those --validation-split holds out)."""
    if not options.validation_split:
        return set()
    items = scan_image_folder(options.images, prompt, options.caption_extension)
    return {item.path for item in held_out(items, options.validation_split, options.validation_seed)}


def validation_images(options: TrainOptions, prompt: str | None, resolution: int) -> list[tuple[torch.Tensor, str]]:
    """(pixels (3, H, W) in [-1, 1], caption) per validation image, centre-cropped, each once."""
    if options.validation_images is not None:
        items = scan_image_folder(options.validation_images, prompt, options.caption_extension)
    else:
        items = held_out(scan_image_folder(options.images, prompt, options.caption_extension), options.validation_split,
                         options.validation_seed)
    if not items:
        return []
    dataset = ImageCaptionDataset([replace(item, repeats=1) for item in items], resolution, center_crop=True)
    return [(sample["pixel_values"], sample["caption"]) for sample in (dataset[index] for index in range(len(dataset)))]


def draw_generators(seed: int, image: int, count: int, stream: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(hash((seed, stream, image, draw)) & 0x7FFF_FFFF_FFFF_FFFF) for draw in range(count)]


@torch.no_grad()
def validation_loss(family, method, images: list[tuple[torch.Tensor, str]], draws: int, seed: int,
                    dtype: torch.dtype) -> float:
    """Mean squared error of the denoiser's prediction on each image at `draws` fixed (timestep, noise) pairs,
    unweighted and without noise offset, so runs with other loss settings compare."""
    kept_state = method.state_dict()  # a technique's own draws (templates) stay as training left them
    losses = []
    try:
        for index, (pixels, caption) in enumerate(images):
            mean, std = family.latent_distribution(pixels.unsqueeze(0))  # (1, C, h, w) each
            latents = family.sample_latents(mean.expand(draws, -1, -1, -1), std.expand(draws, -1, -1, -1),
                                            draw_generators(seed, index, draws, stream=1)).to(dtype)  # (D, C, h, w)
            conditioning = family.encode_prompts(method.training_captions([caption] * draws))
            noisy = family.add_noise(latents, 0.0, draw_generators(seed, index, draws, stream=0))
            prediction = family.predict(noisy, conditioning)
            losses.append(F.mse_loss(prediction.float(), noisy.target.float()))
    finally:
        method.load_state_dict(kept_state)
    return float(torch.stack(losses).mean())


def metric_directions(options: TrainOptions, metrics: list[ValidationMetric]) -> dict[str, bool]:
    """Name -> higher is better, for what this run's validations measure; --keep-best must be one of them."""
    directions = {metric.name: metric.higher_is_better for metric in metrics}
    if options.validation_images is not None or options.validation_split:
        directions[VALIDATION_LOSS] = False
    if options.keep_best and options.keep_best not in directions:
        raise TunelabError(f"--keep-best {options.keep_best}: this run's validations measure "
                           f"{', '.join(directions) or 'nothing'}")
    return directions


def start_validation(options: TrainOptions, method, resolution: int, out_dir: Path, metrics: list[ValidationMetric],
                     step: int, main_process: bool) -> Validation | None:
    """The run's validations (None without --validate-every), picking up where a resumed run's record left off."""
    if not options.validate_every:
        return None
    prompt = options.prompt if options.prompt is not None else method.default_prompt
    validation = Validation(options, validation_images(options, prompt, resolution), metrics, out_dir)
    validation.start(step, main_process)
    return validation


class Validation:
    """One run's validations: when they are due, what they measure, the record and the best artifact."""

    def __init__(self, options: TrainOptions, images: list[tuple[torch.Tensor, str]], metrics: list[ValidationMetric],
                 out_dir: Path):
        self.options, self.images, self.metrics = options, images, metrics
        self.path = out_dir / RECORD
        self.directions = metric_directions(options, metrics)
        self.best = BestArtifact(out_dir, options.keep_best, self.directions[options.keep_best]) if options.keep_best else None
        self.points: list[dict[str, float]] = []

    def due(self, step: int) -> bool:
        every = self.options.validate_every
        return bool(every) and (step % every == 0 or step == self.options.steps)

    def start(self, step: int, main_process: bool) -> None:
        """A fresh run forgets an earlier run's points and best artifact; a resumed one keeps those up to its step."""
        if step == 0:
            if main_process:
                self.path.unlink(missing_ok=True)
                if self.best is not None:
                    self.best.clear()
            return
        if self.path.is_file():
            self.points = [point for point in json.loads(self.path.read_text())["points"] if point["step"] <= step]
        if self.best is not None:
            self.best.resume(self.points)

    def run(self, session, weights_for_use) -> dict[str, float]:
        """Validate the run's model at its current step (`session`: training/loop.py's), with the weights
        `weights_for_use(session)` puts in place (EMA, a schedule-free optimizer's evaluation weights)."""
        step, accelerator, method = session.progress.step, session.accelerator, session.method
        for module in session.step.modules:
            module.eval()  # no dropout: and so no draw from the training's random state
        try:
            with session.step.encoders_on_device(), weights_for_use(session), accelerator.autocast():
                values = self.measure(session.family, method, session.step.weight_dtype)
                save = (lambda folder: method.save(folder, session.metadata)) if accelerator.is_main_process else None
                self.record(step, values, save)
        finally:
            for module in session.step.modules:
                module.train()
        if session.options.log_with != "none":
            accelerator.log({f"validation/{name}": value for name, value in values.items()}, step=step)
        return values

    def measure(self, family, method, dtype: torch.dtype) -> dict[str, float]:
        values = {}
        if self.images:
            values[VALIDATION_LOSS] = validation_loss(family, method, self.images, self.options.validation_timesteps,
                                                      self.options.validation_seed, dtype)
        for metric in self.metrics:
            values[metric.name] = float(metric.measure(family.pipeline))
        for name, value in values.items():
            if not math.isfinite(value):
                raise TunelabError(f"validation: {name} is {value} (NaN/inf); lower --learning-rate")
        return values

    def record(self, step: int, values: dict[str, float], save_best: Callable[[Path], Path] | None) -> None:
        """Add the point, keep the artifact when it is the best yet (main process), rewrite validation.json."""
        point = {"step": step, **values}
        self.points.append(point)
        if self.best is not None and save_best is not None:
            self.best.consider(point, save_best)
        if save_best is None:
            return  # another process of a multi-process run: only the main one writes
        record = {"metrics": {name: "higher" if up else "lower" for name, up in self.directions.items()},
                  "keep_best": self.options.keep_best, "validation_seed": self.options.validation_seed,
                  "points": self.points, "best": self.best.summary() if self.best is not None else None}
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(record, indent=2) + "\n")
        partial.replace(self.path)
