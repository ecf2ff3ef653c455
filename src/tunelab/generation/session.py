"""Generation as a library: options -> a loaded pipeline with its adapters -> images that record how they were made.

`tunelab generate`, its X/Y grids, the comparison bench and the web UI all call this module. It
never names a technique: each registered technique with a generate flag says how its files are
asked for, attached, detached and recorded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from diffusers import DiffusionPipeline

from tunelab.config import option
from tunelab.errors import TunelabError
from tunelab.generation.png_info import save_png
from tunelab.generation.prompt_encoding import COMMA_BACKTRACK, encode_prompt_pair, encode_texts, pipeline_inputs, zero_encoding
from tunelab.generation.prompt_tags import extract_tags, resolve_adapter
from tunelab.generation.samplers import make_scheduler, sampler_name
from tunelab.generation.step_conditioning import PromptPlan, StepConditioning, conditioned_denoiser, encode_plain_texts
from tunelab.methods import check_family, generation_methods
from tunelab.models.family import family_class, family_for
from tunelab.models.loading import load_pipeline, pipeline_class_name
from tunelab.output_path import check_output_path
from tunelab.precision import PrecisionName, precision_dtype


@dataclass
class CommonGenerateOptions:
    model: str = option("preset name, diffusers folder or checkpoint file")
    prompt: str = option("text prompt")
    out: str = option("output .png file, or a folder for several images")
    negative_prompt: str = option("negative prompt", default="")
    seed: int = option("seed of a CPU torch.Generator, as in diffusers; image i uses seed + i", default=0)
    steps: int = option("sampling steps", default=20)
    sampler: str | None = option(
        "sampler name: euler, euler_a, ddim, dpm++_2m, dpm++_2m_karras, dpm++_2m_sde_karras, ... (default dpm++_2m_karras; "
        "Flux.1 and SD3: euler or heun, default euler)", default=None,
    )
    guidance: float = option("classifier-free guidance scale", default=7.0)
    width: int | None = option("image width (default: the model's native size)", default=None)
    height: int | None = option("image height (default: the model's native size)", default=None)
    count: int = option("number of images", default=1)
    seeds: list[int] = option("explicit seeds, one image each (instead of --seed and --count)", default_factory=list)
    precision: PrecisionName = option("inference dtype", default="fp32")
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
    t5: bool = option(
        "models whose T5 encoder is optional (SD3): --no-t5 generates without it (a zero sequence in its place, "
        "as a LoRA trained with --no-t5 saw; less memory)", default=True,
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
        "A1111 prompt syntax: (text:1.3), (text), [text], BREAK, prompts over 75 tokens, [from:to:when], [a|b], AND; "
        "--no-prompt-weighting passes the text as is",
        default=True,
    )
    empty_negative: Literal["model", "encode", "zeros"] = option(
        "with no --negative-prompt, the unconditional pass sees: model = what the model's diffusers pipeline uses "
        "(zeros where its config says force_zeros_for_empty_prompt, as SDXL base; else the empty text), "
        "encode = the empty text's encoding (A1111), zeros = zero vectors",
        default="model",
    )
    comma_backtrack: int = option(
        "A1111's comma back-off: a 75-token window that ends at most this many tokens after a comma ends at the comma "
        "instead (0 = cut at exactly 75)",
        default=COMMA_BACKTRACK,
    )


# The options of `tunelab generate`: the common ones, then each technique's flag (--lora, --embedding, ...).
GenerateOptions = dataclasses.make_dataclass(
    "GenerateOptions",
    [spec for method in generation_methods() for spec in method.generate_fields()],
    bases=(CommonGenerateOptions,),
    namespace={"__module__": __name__},
)


@dataclass
class Attached:
    """One technique's files on the loaded pipeline."""

    method: type
    entries: list  # (file, weight / strength / token) as loaded
    handle: Any  # what the technique needs to detach them


@dataclass
class Session:
    """A loaded pipeline with its adapters attached, and what the prompt resolved to."""

    pipeline: Any
    attached: list[Attached]  # in the registry's order, which is the order they were attached
    prompt_text: str  # the prompt without its <lora:...>/<hypernet:...> tags
    scheduler_config: Any  # the model's own, so each sampler is built from it and not from another sampler's
    width: int
    height: int
    family: Any  # the model family: native size, and whether prompts take A1111 weighting

    def detach(self) -> None:
        """Take every adapter off again; the base model is as it was loaded."""
        for attached in reversed(self.attached):
            attached.method.detach(self.pipeline, attached.handle)
        self.attached = []


def image_seeds(options) -> list[int]:
    """--seeds as given, else --count consecutive seeds from --seed (A1111's batch behaviour)."""
    return list(options.seeds) or [options.seed + index for index in range(options.count)]


def output_paths(out: str, seeds: list[int]) -> list[Path]:
    out_path = Path(out)
    if out_path.suffix.lower() == ".png" and len(seeds) == 1:
        return [out_path]
    return [out_path / f"{index:03d}-{seed}.png" for index, seed in enumerate(seeds)]


def _check(options) -> None:
    if options.grid_x is None and options.grid_y is not None:
        raise TunelabError("--grid-y needs --grid-x")
    if options.count < 1 or options.steps < 1:
        raise TunelabError("--count and --steps must be at least 1")
    if options.comma_backtrack < 0:
        raise TunelabError("--comma-backtrack must be 0 (off) or more")
    for flag, size in (("--width", options.width), ("--height", options.height)):
        if size is not None and (size < 8 or size % 8):
            raise TunelabError(f"{flag} must be a positive multiple of 8 (the VAE's scale), got {size}")
    if options.out:  # "" where a caller keeps the images in memory
        one_file = Path(options.out).suffix.lower() == ".png" and (options.grid_x is not None or len(image_seeds(options)) == 1)
        check_output_path(options.out, folder=not one_file)


def _device(options) -> str:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if options.device == "auto" else options.device
    if options.cpu_offload and not (torch.cuda.is_available() and device.startswith("cuda")):
        raise TunelabError(f"--cpu-offload needs a CUDA GPU (device here: {device})")
    return device


def prepare(options) -> Session:
    _check(options)
    adapters_dir = Path(options.adapters_dir).expanduser() if options.adapters_dir else None
    if adapters_dir is not None and not adapters_dir.is_dir():
        raise TunelabError(f"--adapters-dir {adapters_dir} is not a folder")
    methods = generation_methods()
    prompt_text, tags = extract_tags(options.prompt)
    requests = {}
    for method in methods:
        tagged = [(resolve_adapter(adapters_dir, tag), tag.weight) for tag in tags if tag.kind == method.generate_flag.tag]
        requests[method.name] = method.requested(options, tagged, adapters_dir)
    known = pipeline_class_name(options.model)
    if not options.t5 and known is not None:
        _refuse_no_t5(family_class(known))  # before loading where the model's family is known without it
    pipeline = load_pipeline(options.model, torch_dtype=precision_dtype(options.precision))
    family = family_for(pipeline)
    if not options.t5:
        _refuse_no_t5(type(family))
        family.drop_text_encoder(family.optional_text_encoder)
    scheduler_config = pipeline.scheduler.config
    pipeline.scheduler = make_scheduler(options.sampler, scheduler_config)
    device = _device(options)
    # With offloading, only the denoiser goes to the GPU now, so hypernetworks (hooks, not submodules) attach there.
    (family.module(family.denoiser_name) if options.cpu_offload else pipeline).to(device)
    attached = []
    for method in methods:  # the registry's order: LoRAs before hypernetworks, whose hooks then see the LoRA'd to_k/to_v
        if requests[method.name]:
            check_family(method, family.name, family.title)
        entries, handle = method.attach(pipeline, requests[method.name], adapters_dir)
        attached.append(Attached(method, entries, handle))
    pipeline.set_progress_bar_config(disable=True)
    if options.vae_tiling:
        pipeline.vae.enable_tiling()
    if options.vae_slicing:
        pipeline.vae.enable_slicing()
    if options.cpu_offload:
        pipeline.enable_model_cpu_offload(device=device)
    native = family.native_resolution
    return Session(pipeline, attached, prompt_text, scheduler_config, options.width or native, options.height or native, family)


def _refuse_no_t5(family) -> None:
    if family.optional_text_encoder is None:
        raise TunelabError(f"--no-t5 applies to models whose T5 encoder is optional (SD3); {family.title} models need all their encoders")


def apply_image_options(session: Session, options) -> None:
    """Put one image's sampler and technique options (a grid cell's LoRA weight) on the loaded pipeline."""
    session.pipeline.scheduler = make_scheduler(options.sampler, session.scheduler_config)
    for attached in session.attached:
        attached.entries = attached.method.apply_generate_options(session.pipeline, attached.entries, attached.handle, options)


class PromptInputs(dict):
    """The pipeline's prompt arguments, and the conditioning per sampling step where the prompt changes
    during sampling (prompt editing, alternation, AND); `render` applies it."""

    per_step: StepConditioning | None = None


def text_inputs(session: Session, options) -> dict:
    """The pipeline's prompt arguments: weighted embeddings (A1111 syntax), or the plain text."""
    family = session.family
    if not family.negative_prompt and options.negative_prompt:
        raise TunelabError(f"this model ({family.title}, guidance-distilled) takes no negative prompt; leave --negative-prompt out")
    zero_negative = _zero_negative(family, options)
    if not options.prompt_weighting:
        if not family.prompt_weighting:
            return {"prompt": session.prompt_text, **_plain_negative(family, options), **family.pipeline_text_options()}
        # the pipeline itself: None gives its own empty-negative handling, "" has it encode the empty text
        negative = options.negative_prompt or (None if zero_negative or options.empty_negative == "model" else "")
        return {"prompt": session.prompt_text, "negative_prompt": negative}
    plan = PromptPlan.of(session.prompt_text, options.negative_prompt, options.steps)
    if not family.prompt_weighting:
        return _plain_text_inputs(session, plan, options)
    if not plan.changes:
        return PromptInputs(encode_prompt_pair(session.pipeline, session.prompt_text, options.negative_prompt,
                                               options.comma_backtrack, zero_negative))
    encoded = encode_texts(session.pipeline, plan.texts(), options.comma_backtrack)
    negative, positives = plan.at(1)
    zeros = zero_encoding(encoded[positives[0][0]]) if zero_negative else None
    inputs = PromptInputs(pipeline_inputs(encoded[positives[0][0]], zeros or encoded[negative]))
    inputs.per_step = StepConditioning(plan, encoded, zeros)
    return inputs


def _zero_negative(family, options) -> bool:
    """Whether zero vectors stand for the negative prompt; only when there is none (--empty-negative)."""
    if options.negative_prompt or options.empty_negative == "encode":
        return False
    if not family.prompt_weighting:
        if options.empty_negative == "zeros":
            raise TunelabError(f"--empty-negative zeros is not offered on {family.title} models: their pipeline "
                               "handles the negative prompt itself (use model or encode)")
        return False
    native = family.empty_negative_is_zeros()
    if options.empty_negative == "zeros" and not options.prompt_weighting and not native:
        raise TunelabError("--empty-negative zeros with --no-prompt-weighting needs a model whose pipeline zeros an "
                           "empty negative prompt (force_zeros_for_empty_prompt); drop --no-prompt-weighting")
    return native or options.empty_negative == "zeros"


def _plain_negative(family, options) -> dict:
    """The negative prompt's argument for a pipeline that takes one (SD3), as written."""
    return {"negative_prompt": options.negative_prompt or None} if family.negative_prompt else {}


def _plain_text_inputs(session: Session, plan: PromptPlan, options) -> dict:
    """A model without A1111 weighting (Flux.1, SD3): the text as written, or editing and alternation per step."""
    family = session.family
    if plan.composed:
        raise TunelabError(f"AND and prompt weights (text :0.5) are not supported on {family.title} models "
                           "(there: prompt editing [from:to:when] and alternation [a|b])")
    if not plan.changes:
        return PromptInputs(prompt=session.prompt_text, **_plain_negative(family, options), **family.pipeline_text_options())
    encoded = encode_plain_texts(family, plan.texts())
    negative, positives = plan.at(1)
    embeds, pooled = encoded[positives[0][0]]
    inputs = PromptInputs(prompt_embeds=embeds, pooled_prompt_embeds=pooled, **family.pipeline_text_options())
    if family.negative_prompt:
        inputs.update(negative_prompt_embeds=encoded[negative][0], negative_pooled_prompt_embeds=encoded[negative][1])
    inputs.per_step = StepConditioning(plan, encoded)
    return inputs


def render(session: Session, options, seed: int, prompt_inputs: dict):
    """One image; where the prompt changes during sampling, the denoiser conditions per step while it runs.
    An image with NaN/inf pixels is an error, never a black PNG."""
    per_step = getattr(prompt_inputs, "per_step", None)
    arguments = dict(
        **prompt_inputs,
        num_inference_steps=options.steps,
        guidance_scale=options.guidance,
        width=session.width,
        height=session.height,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",  # checked for NaN/inf below, then made a PIL image as the pipeline would
    )
    if per_step is None:
        return _finite_image(session.pipeline(**arguments).images, seed)
    if per_step.plan.steps != options.steps:
        raise TunelabError(f"these prompt inputs were made for {per_step.plan.steps} steps, not {options.steps}: call text_inputs again")
    per_step.iteration = 0
    denoiser = session.family.module(session.family.denoiser_name)
    with conditioned_denoiser(denoiser, per_step, session.pipeline.scheduler.order) as on_step_end:
        return _finite_image(session.pipeline(**arguments, callback_on_step_end=on_step_end).images, seed)


def _finite_image(pixels: np.ndarray, seed: int):
    """(1, H, W, 3) floats in [0, 1] -> a PIL image, refused when any value is NaN or infinite."""
    if not np.isfinite(pixels).all():
        raise TunelabError(
            f"the model produced NaN/inf pixels for seed {seed}: no image written (a LoRA or prompt weight out of range, "
            "a prompt weighting that cancels out on this model, fp16 overflow, or broken weights)"
        )
    return DiffusionPipeline.numpy_to_pil(pixels)[0]


def image_record(session: Session, options, seed: int) -> dict:
    """Everything needed to make this image again (`--from-png`), plus the A1111-style summary fields."""
    record = {
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
    }
    for attached in session.attached:
        record[attached.method.generate_flag.record_key] = [(str(path), value) for path, value in attached.entries]
    record["options"] = reproducible_options(options, seed, session)
    return record


# Options that say where and how many images go, not how one image is made.
_NOT_RECORDED = ("out", "count", "seeds", "from_png", "grid_x", "grid_y")


def reproducible_options(options, seed: int, session: Session) -> dict:
    """The options that make exactly this image again: `--from-png` reads them back."""
    recorded = {key: value for key, value in asdict(options).items() if key not in _NOT_RECORDED}
    recorded.update(seed=seed, width=session.width, height=session.height)
    return recorded


def rendered_images(session: Session, options) -> Iterator[tuple[Any, dict, Path]]:
    """(image, its record, where `out` puts it) for each seed."""
    prompt_inputs = text_inputs(session, options)  # the same for every seed: encode once
    seeds = image_seeds(options)
    for seed, path in zip(seeds, output_paths(options.out, seeds)):
        yield render(session, options, seed, prompt_inputs), image_record(session, options, seed), path


def generate_images(options) -> list[Path]:
    """One image per seed, each saved as a PNG with its record."""
    return [save_png(image, path, record) for image, record, path in rendered_images(prepare(options), options)]
