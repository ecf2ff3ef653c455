"""`tunelab generate`: a prompt, a model, optional LoRAs, embeddings, hypernetworks -> PNGs that record how they were made."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunelab.config import option


@dataclass
class GenerateOptions:
    model: str = option("preset name, diffusers folder or checkpoint file")
    prompt: str = option("text prompt")
    out: str = option("output .png file, or a folder for several images")
    negative_prompt: str = option("negative prompt", default="")
    seed: int = option("seed of a CPU torch.Generator, as in diffusers; image i uses seed + i", default=0)
    steps: int = option("sampling steps", default=20)
    sampler: str | None = option(
        "sampler name: euler, euler_a, ddim, dpm++_2m, dpm++_2m_karras, dpm++_2m_sde_karras, ... (default dpm++_2m_karras; "
        "Flux.1: euler or heun, default euler)", default=None,
    )
    guidance: float = option("classifier-free guidance scale", default=7.0)
    width: int | None = option("image width (default: the model's native size)", default=None)
    height: int | None = option("image height (default: the model's native size)", default=None)
    count: int = option("number of images", default=1)
    seeds: list[int] = option("explicit seeds, one image each (instead of --seed and --count)", default_factory=list)
    lora: list[str] = option("LoRA file with optional weight, FILE[:WEIGHT]; repeat the flag for several", repeat=True, default_factory=list)
    embedding: list[str] = option(
        "textual-inversion embedding, FILE[:TOKEN] (default token: the name in the file, else the file name); repeatable",
        repeat=True, default_factory=list,
    )
    hypernetwork: list[str] = option("hypernetwork file with optional strength, FILE[:STRENGTH]; repeatable", repeat=True, default_factory=list)
    lora_weight: float | None = option("one weight for every LoRA, replacing the ones given with them", default=None)
    precision: Literal["fp32", "fp16", "bf16"] = option("inference dtype", default="fp32")
    device: str = option("torch device: auto (CUDA when present), cpu, cuda, cuda:1, ...", default="auto")
    adapters_dir: str | None = option(
        "folder for <lora:NAME:W> and <hypernet:NAME:W> prompt tags (NAME = file stem); its embeddings/ subfolder "
        "is loaded as tokens named after the files",
        default=None,
    )
    vae_tiling: bool = option("decode the image in tiles: large images in little memory", default=False)
    vae_slicing: bool = option("decode a batch one image at a time", default=False)
    cpu_offload: bool = option(
        "keep each model on the CPU until it runs (diffusers' enable_model_cpu_offload): less GPU memory; needs CUDA",
        default=False,
    )
    from_png: str | None = option(
        "regenerate the image in this PNG (written by tunelab generate) from its recorded options; flags given override them",
        default=None,
    )
    grid_x: str | None = option(
        "X/Y grid columns, PARAM=v1,v2,... over seed, steps, guidance, sampler or lora_weight; "
        "writes OUT/grid.png and the cells beside it (or OUT.png and OUT-cells/)",
        default=None,
    )
    grid_y: str | None = option("X/Y grid rows, PARAM=v1,v2,... (as --grid-x)", default=None)
    prompt_weighting: bool = option(
        "A1111 prompt syntax: (text:1.3), (text), [text], BREAK, prompts over 75 tokens; --no-prompt-weighting passes the text as is",
        default=True,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tunelab.config import add_arguments as add_schema_arguments

    parser.add_argument("--config", help="YAML or TOML file with any of the options below")
    add_schema_arguments(parser, [GenerateOptions])


def image_seeds(options: GenerateOptions) -> list[int]:
    """--seeds as given, else --count consecutive seeds from --seed (A1111's batch behaviour)."""
    return list(options.seeds) or [options.seed + index for index in range(options.count)]


def output_paths(out: str, seeds: list[int]) -> list[Path]:
    out_path = Path(out)
    if out_path.suffix.lower() == ".png" and len(seeds) == 1:
        return [out_path]
    return [out_path / f"{index:03d}-{seed}.png" for index, seed in enumerate(seeds)]


@dataclass
class Session:
    """A loaded pipeline with its adapters attached, and what the prompt resolved to."""

    pipeline: object
    loras: list[tuple[Path, float]]  # flags first, then <lora:...> tags
    embeddings: list[tuple[Path, str]]  # (file, token)
    hypernetworks: list[tuple[Path, float]]
    prompt_text: str  # the prompt without its <lora:...>/<hypernet:...> tags
    lora_names: list[str]  # diffusers adapter names, one per entry of `loras`
    scheduler_config: object  # the model's own, so each sampler is built from it and not from another sampler's
    width: int
    height: int
    family: object  # the model family: native size, and whether prompts take A1111 weighting


def prepare(options: GenerateOptions) -> Session:
    import torch

    from tunelab.errors import TunelabError
    from tunelab.formats.safetensors_io import precision_dtype
    from tunelab.generate.prompt_tags import (
        attach_folder_embeddings,
        extract_tags,
        folder_embeddings,
        resolve_adapter,
    )
    from tunelab.generate.samplers import make_scheduler
    from tunelab.methods.hypernetwork import attach_hypernetworks
    from tunelab.methods.lora import attach_loras, parse_weighted_path
    from tunelab.methods.textual_inversion import attach_embeddings, parse_token_path
    from tunelab.models.family import family_for
    from tunelab.models.loading import load_pipeline

    if options.grid_x is None and options.grid_y is not None:
        raise TunelabError("--grid-y needs --grid-x")
    if options.count < 1 or options.steps < 1:
        raise TunelabError("--count and --steps must be at least 1")
    adapters_dir = Path(options.adapters_dir).expanduser() if options.adapters_dir else None
    if adapters_dir is not None and not adapters_dir.is_dir():
        raise TunelabError(f"--adapters-dir {adapters_dir} is not a folder")
    prompt_text, tags = extract_tags(options.prompt)
    tagged = {kind: [(resolve_adapter(adapters_dir, tag), tag.weight) for tag in tags if tag.kind == kind]
              for kind in ("lora", "hypernet")}
    loras = [parse_weighted_path(spec) for spec in options.lora] + tagged["lora"]
    if options.lora_weight is not None:
        loras = [(path, options.lora_weight) for path, _ in loras]
    embeddings = [parse_token_path(spec) for spec in options.embedding]
    hypernetworks = [parse_weighted_path(spec) for spec in options.hypernetwork] + tagged["hypernet"]
    pipeline = load_pipeline(options.model, torch_dtype=precision_dtype(options.precision))
    family = family_for(pipeline)
    scheduler_config = pipeline.scheduler.config
    pipeline.scheduler = make_scheduler(options.sampler, scheduler_config)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if options.device == "auto" else options.device
    if options.cpu_offload and not (torch.cuda.is_available() and device.startswith("cuda")):
        raise TunelabError(f"--cpu-offload needs a CUDA GPU (device here: {device})")
    # With offloading, only the denoiser goes to the GPU now, so hypernetworks (hooks, not submodules) attach there.
    (family.module(family.denoiser_name) if options.cpu_offload else pipeline).to(device)
    lora_names = attach_loras(pipeline, loras)
    tokens = attach_embeddings(pipeline, embeddings)
    loaded_embeddings = [(path, token) for (path, _), token in zip(embeddings, tokens)]
    loaded_embeddings += attach_folder_embeddings(pipeline, folder_embeddings(adapters_dir))
    attach_hypernetworks(pipeline, hypernetworks)  # after LoRAs: their to_k/to_v see the shifted context, as in A1111
    pipeline.set_progress_bar_config(disable=True)
    if options.vae_tiling:
        pipeline.vae.enable_tiling()
    if options.vae_slicing:
        pipeline.vae.enable_slicing()
    if options.cpu_offload:
        pipeline.enable_model_cpu_offload(device=device)
    native = family.native_resolution
    return Session(pipeline, loras, loaded_embeddings, hypernetworks, prompt_text, lora_names, scheduler_config,
                   options.width or native, options.height or native, family)


def text_inputs(session: Session, options: GenerateOptions) -> dict:
    """The pipeline's prompt arguments: weighted embeddings (A1111 syntax), or the plain text."""
    if not session.family.prompt_weighting:
        from tunelab.errors import TunelabError

        if options.negative_prompt:
            raise TunelabError("this model (Flux.1, guidance-distilled) takes no negative prompt; leave --negative-prompt out")
        return {"prompt": session.prompt_text, "max_sequence_length": session.family.max_sequence_length}
    if not options.prompt_weighting:
        return {"prompt": session.prompt_text, "negative_prompt": options.negative_prompt or None}
    from tunelab.generate.prompt_encoding import encode_prompt_pair

    return encode_prompt_pair(session.pipeline, session.prompt_text, options.negative_prompt)


def render(session: Session, options: GenerateOptions, seed: int, prompt_inputs: dict):
    import torch

    return session.pipeline(
        **prompt_inputs,
        num_inference_steps=options.steps,
        guidance_scale=options.guidance,
        width=session.width,
        height=session.height,
        generator=torch.Generator().manual_seed(seed),
    ).images[0]


def image_record(session: Session, options: GenerateOptions, seed: int) -> dict:
    """Everything needed to make this image again (`--from-png`), plus the A1111-style summary fields."""
    from tunelab.generate.samplers import sampler_name

    return {
        "model": options.model,
        "prompt": options.prompt,
        "negative_prompt": options.negative_prompt,
        "seed": seed,
        "steps": options.steps,
        "sampler": sampler_name(options.sampler, session.scheduler_config),
        "guidance": options.guidance,
        "width": session.width,
        "height": session.height,
        "precision": options.precision,
        "prompt_weighting": options.prompt_weighting,
        "loras": [(str(path), weight) for path, weight in session.loras],
        "embeddings": [(str(path), token) for path, token in session.embeddings],
        "hypernetworks": [(str(path), strength) for path, strength in session.hypernetworks],
        "options": reproducible_options(options, seed, session),
    }


# Options that say where and how many images go, not how one image is made.
_NOT_RECORDED = ("out", "count", "seeds", "from_png", "grid_x", "grid_y")


def reproducible_options(options: GenerateOptions, seed: int, session: Session) -> dict:
    """The options that make exactly this image again: `--from-png` reads them back."""
    from dataclasses import asdict

    recorded = {key: value for key, value in asdict(options).items() if key not in _NOT_RECORDED}
    recorded.update(seed=seed, width=session.width, height=session.height)
    return recorded


def generate(options: GenerateOptions) -> list[Path]:
    from tunelab.generate.png_info import save_png

    if options.grid_x is not None:
        from tunelab.generate.grid import generate_grid

        return generate_grid(options)
    session = prepare(options)
    prompt_inputs = text_inputs(session, options)  # the same for every seed: encode once
    seeds = image_seeds(options)
    paths = output_paths(options.out, seeds)
    for seed, path in zip(seeds, paths):
        save_png(render(session, options, seed, prompt_inputs), path, image_record(session, options, seed))
    return paths


def run(args: argparse.Namespace) -> None:
    from tunelab.config import resolve

    internal = {"_module", "_argv", "debug", "command", "config"}
    cli_values = {key: value for key, value in vars(args).items() if key not in internal}
    if cli_values.get("from_png"):
        from tunelab.generate.png_info import read_options

        cli_values = {**read_options(Path(cli_values["from_png"])), **cli_values}  # the command line wins
    (options,) = resolve([GenerateOptions], cli_values, args.config)
    for path in generate(options):
        print(f"wrote {path}")
