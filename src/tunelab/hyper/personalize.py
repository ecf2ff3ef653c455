"""`tunelab personalize`: a subject's LoRA predicted from one or a few images, optionally refined, written as an
ordinary kohya LoRA file (diffusers, A1111 and ComfyUI load it)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from tunelab.data.images import IMAGE_EXTENSIONS
from tunelab.errors import TunelabError
from tunelab.formats.kohya_lora import kohya_metadata
from tunelab.formats.lora_io import read_lora, write_lora
from tunelab.formats.lora_set import LoraSet
from tunelab.formats.weight_predictor import read_predictor_description
from tunelab.lora.weight_predictor import load_predictor, predict_lora
from tunelab.methods.predicted_lora import (REFINE_LEARNING_RATE, REFINE_MIN_SNR_GAMMA, PredictedLoraMethod, predictor_path,
                                            square_pixels)
from tunelab.training.loop import train
from tunelab.training.prepare import prepare_run


@dataclass
class Personalized:
    path: Path
    predict_seconds: float
    total_seconds: float


def image_paths(given: list[str]) -> list[Path]:
    """Image files and the images in given folders, in order."""
    paths = []
    for item in map(Path, given):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.is_file():
            paths.append(item)
        else:
            raise TunelabError(f"no such image or folder: {item}")
    if not paths:
        raise TunelabError(f"no images in {', '.join(given)}")
    return paths


def personalize(hypernet: str, images: list[str], out: Path, *, refine_steps: int = 0, model: str | None = None,
                prompt: str | None = None, class_prompt: str | None = None, seed: int = 0,
                learning_rate: float = REFINE_LEARNING_RATE, min_snr_gamma: float = REFINE_MIN_SNR_GAMMA,
                log: Callable[[str], None] = print) -> Personalized:
    started = time.perf_counter()
    if refine_steps < 0:
        raise TunelabError(f"--refine-steps must be 0 or more, got {refine_steps}")
    if not min_snr_gamma >= 0:  # NaN too
        raise TunelabError(f"--min-snr-gamma must be 0 (uniform weights) or more, got {min_snr_gamma}")
    if refine_steps and not prompt:
        raise TunelabError("--refine-steps needs --prompt, the subject's prompt with the predictor's token (e.g. \"a sks circle\")")
    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise TunelabError(f"--out is a .safetensors file, got {out}")
    paths = image_paths(images)
    hypernet_file = predictor_path(hypernet)
    facts = read_predictor_description(hypernet_file)  # the header; the predictor's tensors are read once, below
    pixels = [square_pixels(path, facts["resolution"]) for path in paths]
    metadata = {"tunelab_method": "predicted", "tunelab_predictor_token": facts["token"],
                "ss_base_model_version": facts["base_model_version"]}
    if refine_steps:  # `tunelab train predicted_lora` loads the predictor and predicts before its steps
        options = refine_options(model or facts["base_model"], prompt, refine_steps, len(pixels), class_prompt, seed,
                                 learning_rate, min_snr_gamma)
        lora, predict_seconds = predicted_and_refined(hypernet_file, pixels, options)
        metadata |= {"tunelab_refine_steps": str(refine_steps), "ss_min_snr_gamma": str(min_snr_gamma)}
        log(f"predicted the LoRA in {predict_seconds:.3f} s and refined it with {refine_steps} LoRA steps")
    else:
        predictor, basis, _ = load_predictor(hypernet_file)
        lora, predict_seconds = predict_lora(predictor, basis, pixels)
        log(f"predicted a rank-{basis.rank} LoRA of {basis.layers} layers from {len(pixels)} image(s) in {predict_seconds:.3f} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_lora(lora, out, "kohya", kohya_metadata(lora, facts["base_model_version"], metadata, {}))
    return Personalized(out, predict_seconds, time.perf_counter() - started)


def refine_options(model: str, prompt: str, steps: int, images: int, class_prompt: str | None = None, seed: int = 0,
                   learning_rate: float = REFINE_LEARNING_RATE, min_snr_gamma: float = REFINE_MIN_SNR_GAMMA) -> dict:
    """The `tunelab train predicted_lora` options of a refinement, less its images, output and predictor."""
    options = {"model": model, "prompt": prompt, "steps": steps, "learning_rate": learning_rate, "seed": seed,
               "batch_size": min(4, images), "min_snr_gamma": min_snr_gamma or None}  # gamma 0: uniform, the trainer's off
    if class_prompt:
        options |= {"class_prompt": class_prompt, "num_class_images": 16, "class_sample_steps": 20}
    return options


def predicted_and_refined(hypernet: Path, pixels: list, options: dict) -> tuple[LoraSet, float]:
    """`tunelab train predicted_lora` on these images with `options` (the prediction, then its steps): the LoRA and
    the prediction's seconds."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "images"
        folder.mkdir()
        for index, image in enumerate(pixels):  # the images the prediction sees are the refinement's data
            Image.fromarray(image).save(folder / f"{index:04d}.png")
        values = options | {"images": str(folder), "out": str(Path(scratch) / "run"), "hypernet": str(hypernet),
                            "log_with": "none", "overwrite": True}
        run = prepare_run(PredictedLoraMethod.name, values)
        artifact = train(run.options, run.method, run.resolved, run.family_options)
        return read_lora(Path(artifact))[0], run.method.predict_seconds
