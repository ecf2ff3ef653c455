"""`tunelab generate`: a prompt, a model, optional LoRAs, embeddings, hypernetworks -> PNGs that record how they were made."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


def _opt(help_text: str, repeat: bool = False, **kwargs):
    return field(metadata={"help": help_text, "repeat": repeat}, **kwargs)


@dataclass
class GenerateOptions:
    model: str = _opt("preset name, diffusers folder or checkpoint file")
    prompt: str = _opt("text prompt")
    out: str = _opt("output .png file, or a folder for several images")
    negative_prompt: str = _opt("negative prompt", default="")
    seed: int = _opt("seed of a CPU torch.Generator, as in diffusers; image i uses seed + i", default=0)
    steps: int = _opt("sampling steps", default=20)
    sampler: str = _opt("sampler name: euler, euler_a, ddim, dpm++_2m, dpm++_2m_karras, dpm++_2m_sde_karras, ...", default="dpm++_2m_karras")
    guidance: float = _opt("classifier-free guidance scale", default=7.0)
    width: int | None = _opt("image width (default: the model's native size)", default=None)
    height: int | None = _opt("image height (default: the model's native size)", default=None)
    count: int = _opt("number of images", default=1)
    lora: list[str] = _opt("LoRA file with optional weight, FILE[:WEIGHT]; repeat the flag for several", repeat=True, default_factory=list)
    embedding: list[str] = _opt(
        "textual-inversion embedding, FILE[:TOKEN] (default token: the name in the file, else the file name); repeatable",
        repeat=True, default_factory=list,
    )
    hypernetwork: list[str] = _opt("hypernetwork file with optional strength, FILE[:STRENGTH]; repeatable", repeat=True, default_factory=list)
    precision: Literal["fp32", "fp16", "bf16"] = _opt("inference dtype", default="fp32")
    device: str = _opt("torch device: auto (CUDA when present), cpu, cuda, cuda:1, ...", default="auto")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tunelab.config import add_arguments as add_schema_arguments

    parser.add_argument("--config", help="YAML or TOML file with any of the options below")
    add_schema_arguments(parser, [GenerateOptions])


def output_paths(out: str, count: int, seed: int) -> list[Path]:
    out_path = Path(out)
    if out_path.suffix.lower() == ".png" and count == 1:
        return [out_path]
    return [out_path / f"{index:03d}-{seed + index}.png" for index in range(count)]


def generate(options: GenerateOptions) -> list[Path]:
    import torch

    from tunelab.errors import TunelabError
    from tunelab.formats.safetensors_io import precision_dtype
    from tunelab.generate.png_info import save_png
    from tunelab.generate.samplers import make_scheduler
    from tunelab.methods.hypernetwork import attach_hypernetworks
    from tunelab.methods.lora import attach_loras, parse_weighted_path
    from tunelab.methods.textual_inversion import attach_embeddings, parse_token_path
    from tunelab.models.loading import load_pipeline

    if options.count < 1 or options.steps < 1:
        raise TunelabError("--count and --steps must be at least 1")
    loras = [parse_weighted_path(spec) for spec in options.lora]
    embeddings = [parse_token_path(spec) for spec in options.embedding]
    hypernetworks = [parse_weighted_path(spec) for spec in options.hypernetwork]
    pipeline = load_pipeline(options.model, torch_dtype=precision_dtype(options.precision))
    pipeline.scheduler = make_scheduler(options.sampler, pipeline.scheduler.config)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if options.device == "auto" else options.device
    pipeline.to(device)
    attach_loras(pipeline, loras)
    tokens = attach_embeddings(pipeline, embeddings)
    attach_hypernetworks(pipeline, hypernetworks)  # after LoRAs: their to_k/to_v see the shifted context, as in A1111
    pipeline.set_progress_bar_config(disable=True)
    native = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    width, height = options.width or native, options.height or native
    paths = output_paths(options.out, options.count, options.seed)
    for index, path in enumerate(paths):
        seed = options.seed + index
        image = pipeline(
            options.prompt,
            negative_prompt=options.negative_prompt or None,
            num_inference_steps=options.steps,
            guidance_scale=options.guidance,
            width=width,
            height=height,
            generator=torch.Generator().manual_seed(seed),
        ).images[0]
        record = {
            "model": options.model,
            "prompt": options.prompt,
            "negative_prompt": options.negative_prompt,
            "seed": seed,
            "steps": options.steps,
            "sampler": options.sampler,
            "guidance": options.guidance,
            "width": width,
            "height": height,
            "precision": options.precision,
            "loras": [(str(path), weight) for path, weight in loras],
            "embeddings": [(str(path), token) for (path, _), token in zip(embeddings, tokens)],
            "hypernetworks": [(str(path), strength) for path, strength in hypernetworks],
        }
        save_png(image, path, record)
    return paths


def run(args: argparse.Namespace) -> None:
    from tunelab.config import resolve

    internal = {"_module", "debug", "command", "config"}
    cli_values = {key: value for key, value in vars(args).items() if key not in internal}
    (options,) = resolve([GenerateOptions], cli_values, args.config)
    for path in generate(options):
        print(f"wrote {path}")
