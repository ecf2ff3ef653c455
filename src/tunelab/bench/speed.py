"""`tunelab bench speed`: tunelab's own training step, timed beside the reference step in one process.

The tunelab side runs `tunelab.training.step` (what `tunelab train` runs for every micro-batch)
on a real-size model with random weights (or a tiny preset, to check the bench on a CPU).
The reference side is the plain diffusers + PEFT loop of `reference_step.py`, copied into
this package. Both print the reference script's fields as JSON lines, plus warm-up seconds
(compilation included), model FLOP utilisation where the card's peak is known, and the time
a 4500-step run would take including warm-up; a third line gives tunelab / reference.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
import traceback
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Literal

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from torch.utils.flop_counter import FlopCounterMode

from tunelab.bench import reference_step
from tunelab.bench.random_model import config_folder, random_pipeline
from tunelab.config import option
from tunelab.errors import TunelabError
from tunelab.methods import METHODS, method_class
from tunelab.models.family import family_for
from tunelab.models.loading import load_pipeline
from tunelab.training.options import TrainOptions
from tunelab.training.step import prepare_step, weight_dtype

# A run of the length the study trained, to weigh warm-up against steady-state speed.
RUN_STEPS = 4500
CAPTION = "a photo of sks toy"
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name fragment, most specific first.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("H20", 148.0), ("A100", 312.0),
                    ("L40S", 362.0), ("B200", 2250.0))
# Bench defaults that differ from `tunelab train`'s: the reference trains on latents under bf16 autocast.
BENCH_TRAIN_DEFAULTS = {"mixed_precision": "bf16", "cache_latents": True, "cache_text_embeddings": True,
                        "offload_encoders": True}
# The trainer options the bench passes on (speed and memory); the rest keep their defaults.
TRAIN_FIELDS = ("mixed_precision", "gradient_checkpointing", "gradient_checkpointing_mode", "cache_latents",
                "cache_text_embeddings", "compile", "attention_backend", "adamw_implementation", "channels_last",
                "lora_fp32_inputs", "optimizer", "offload_encoders")
# (family name, the technique's reference_mode) -> the reference case with that architecture and mode.
REFERENCE_CASES = {
    ("sd", "lora"): "sd15-lora32-bs4",
    ("sd", "full"): "sd15-full-bs4",
    ("sdxl", "lora"): "sdxl-lora32-bs4",
    ("sdxl", "full"): "sdxl-full-bs1",
    ("flux", "lora"): "flux-lora16-bs1",
}


@dataclass
class BenchOptions:
    family: Literal["sd", "sdxl", "flux", "sd3"] | None = option(
        "real-size architecture with random weights: sd (1.5), sdxl, flux (1-dev), sd3 (3.5 Medium; no reference step)", default=None
    )
    preset: str | None = option("a built-in tiny preset instead (tiny-sd, ...): checks the bench on a CPU, not speed", default=None)
    method: Literal[tuple(METHODS)] = option("technique to train", default="lora")
    batch: int = option("images per step", default=1)
    resolution: int | None = option("image side in pixels (default: the model's native size)", default=None)
    steps: int = option("timed steps", default=10)
    warmup_steps: int = option("untimed steps first (caches fill, compilation happens here)", default=2)
    rank: int | None = option("LoRA rank (default: 32, 16 on Flux, as the reference; 8 on a preset, whose layers are tiny)", default=None)
    reference: bool = option("also time the reference step in this process, for the ratio", default=True)
    reference_cudnn_sdp: bool = option(
        "let the reference use cuDNN attention (--no-reference-cudnn-sdp is its --no-cudnn-sdp, needed for Flux "
        "with torch 2.11/cu130)", default=True,
    )
    out: str | None = option("also append the JSON lines to this file", default=None)


def _train_fields():
    """TrainOptions' speed fields as a schema of their own, with the bench's defaults."""
    hints = typing.get_type_hints(TrainOptions)
    chosen = {f.name: f for f in fields(TrainOptions) if f.name in TRAIN_FIELDS}
    spec = []
    for name, original in chosen.items():
        default = BENCH_TRAIN_DEFAULTS.get(name, original.default)
        spec.append((name, hints[name], field(default=default, metadata=original.metadata)))
    return dataclasses.make_dataclass("BenchTrainOptions", spec)


BenchTrainOptions = _train_fields()


def peak_tflops(device_name: str) -> float | None:
    for fragment, peak in BF16_PEAK_TFLOPS:
        if fragment in device_name:
            return peak
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gib(count: int) -> float:
    return round(count / 2**30, 2)


def _module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def _load_pipeline(bench: BenchOptions, device: torch.device, dtype: torch.dtype):
    if bench.preset is not None:
        return load_pipeline(bench.preset)

    return random_pipeline(config_folder(bench.family), device, dtype)


def bench_rank(bench: BenchOptions, family_name: str) -> int:
    """The LoRA rank both sides use: the asked one, else the reference's (32; 16 on Flux); a preset's layers are
    tiny (tiny-sd's first attention is 16 wide) and refuse a rank above their width, so presets take 8."""
    if bench.rank:
        return bench.rank
    if bench.preset is not None:
        return 8
    return 16 if family_name == "flux" else 32


def _method(bench: BenchOptions, family_name: str):
    method_type = method_class(bench.method)
    names = {f.name for f in fields(method_type.options_schema)}
    rank = bench_rank(bench, family_name)
    values = {key: value for key, value in {**method_type.example_options, "rank": rank, "alpha": float(rank)}.items() if key in names}
    return method_type(method_type.options_schema(**values))


@contextmanager
def _accelerator(mixed_precision: str):
    try:
        yield Accelerator(mixed_precision=mixed_precision)
    finally:
        AcceleratorState._reset_state()  # mixed precision is process-wide state in accelerate


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_tunelab(bench: BenchOptions, train_values: dict) -> tuple[dict, int]:
    """Build the model, prepare tunelab's step as the trainer does, and time it: (row, latent side)."""
    options = TrainOptions(model=bench.preset or f"random {bench.family}", images="", out="", batch_size=bench.batch,
                           steps=RUN_STEPS, log_with="none", **train_values)
    with _accelerator(options.mixed_precision) as accelerator:
        device = accelerator.device
        set_seed(options.seed)
        pipeline = _load_pipeline(bench, device, weight_dtype(options.mixed_precision))
        family = family_for(pipeline, options)
        resolution = bench.resolution or family.native_resolution
        latent_side = resolution // pipeline.vae_scale_factor
        options = replace(options, resolution=resolution)
        method = _method(bench, family.name)
        step = prepare_step(options, method, family, accelerator)
        denoiser = family.module(family.denoiser_name)
        trained = {id(p): p for group in step.optimizer.param_groups for p in group["params"]}
        frozen_encoders = [m for name, m in family.frozen_modules().items() if name != family.denoiser_name]
        generator = torch.Generator().manual_seed(options.seed)
        batch = {
            "pixel_values": torch.rand(bench.batch, 3, resolution, resolution, generator=generator) * 2 - 1,  # (B, 3, R, R)
            "captions": [CAPTION] * bench.batch,
            "is_prior": torch.zeros(bench.batch, dtype=torch.bool),
        }
        index = iter(range(10**9))

        _sync(device)
        started = time.perf_counter()
        for _ in range(bench.warmup_steps):
            step(batch, 0, next(index))
        _sync(device)
        warmup_s = time.perf_counter() - started
        # FLOPs of one step, counted eagerly (a compiled region hides its operations from the counter).
        with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
            step(batch, 0, next(index))
        flops = counter.get_total_flops()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        started = time.perf_counter()
        for _ in range(bench.steps):
            step(batch, 0, next(index))
        _sync(device)
        seconds = (time.perf_counter() - started) / bench.steps
        peak = _gib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
        row = dict(
            case=f"{family.name}-{bench.method}-bs{bench.batch}-{resolution}px",
            params_m=round(sum(p.numel() for p in denoiser.parameters()) / 1e6, 1),
            trainable_m=round(sum(p.numel() for p in trained.values()) / 1e6, 2),
            batch=bench.batch, s_per_step=round(seconds, 4), images_per_s=round(bench.batch / seconds, 2), peak_gib=peak,
            tflop_per_step=round(flops / 1e12, 3), achieved_tflops=round(flops / seconds / 1e12, 1),
            warmup_s=round(warmup_s, 2), frozen_encoders_gib=_gib(sum(_module_bytes(m) for m in frozen_encoders)),
            family=family.name, method=bench.method, resolution=resolution,
        )
    del step, method, family, pipeline, denoiser, trained, frozen_encoders
    _free(device)
    return row, latent_side


def time_reference(bench: BenchOptions, family_name: str, resolution: int, latent_side: int, device: torch.device) -> dict | None:
    """The reference step for the same architecture, mode, batch, resolution and rank; None where it has no such case."""
    case = REFERENCE_CASES.get((family_name, method_class(bench.method).reference_mode))
    if case is None:
        return None
    rank = bench_rank(bench, family_name)
    cudnn = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(bench.reference_cudnn_sdp and cudnn)
    try:
        row = reference_step.run_case(case, bench.preset is not None, bench.steps, device.type, batch_size=bench.batch,
                                      latent=latent_side, rank=rank)
    finally:
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        _free(device)
    return dict(row, resolution=resolution)


def _guarded(measure, case: str | None):
    """What `measure` returns, or an error row for `case` when it fails other than on bad input."""
    try:
        return measure()
    except TunelabError:
        raise
    except Exception as error:
        traceback.print_exc()
        _free(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        return {"case": case, "error": f"{type(error).__name__}: {error}"[:300]}


def _with_utilisation(row: dict, peak: float | None) -> dict:
    row["mfu"] = round(row["achieved_tflops"] / peak, 3) if peak else None
    row[f"run_{RUN_STEPS}_s"] = round(row["warmup_s"] + RUN_STEPS * row["s_per_step"], 1)
    return row


def _ratio(tunelab: dict, reference: dict) -> dict:
    def ratio(a, b):
        return round(a / b, 3) if a is not None and b else None

    run = f"run_{RUN_STEPS}_s"
    return dict(side="ratio", case=tunelab["case"], reference_case=reference["case"],
                images_per_s=ratio(tunelab["images_per_s"], reference["images_per_s"]),
                peak_memory=ratio(tunelab["peak_gib"], reference["peak_gib"]),
                **{f"speedup_{run}": ratio(reference[run], tunelab[run])})


def run_speed_bench(bench: BenchOptions, train_values: dict, emit=print) -> list[dict]:
    """Time the reference (when it has the case) and tunelab, side by side; emit one JSON line each."""
    if (bench.family is None) == (bench.preset is None):
        raise TunelabError("give one of --family (real size) or --preset (a tiny built-in model)")
    if bench.batch < 1 or bench.steps < 1 or bench.warmup_steps < 0:
        raise TunelabError("--batch and --steps must be at least 1, --warmup-steps at least 0")
    if bench.family is not None:
        config_folder(bench.family)  # refused now if this version ships no configuration for it
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    header = dict(side="device", device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  torch=torch.__version__, options=train_values)
    peak = peak_tflops(header["device"]) if device.type == "cuda" else None
    if device.type == "cuda":
        # As the reference script's main() does; set for both sides alike.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows: list[dict] = []
    out = open(bench.out, "a") if bench.out else None  # noqa: SIM115 (closed below; each line flushed as it comes)

    def record(row: dict) -> None:
        rows.append(row)
        emit(json.dumps(row))
        if out is not None:
            out.write(json.dumps(row) + "\n")
            out.flush()

    try:
        record(header)
        # tunelab runs first (a cold GPU and first-use library set-up count against it, not for it); each
        # side frees its model before the other builds one, and peak memory is reset before each timed loop.
        # A side that fails (out of memory, a kernel error) is reported and does not hide the other.
        measured = _guarded(lambda: time_tunelab(bench, train_values), f"{bench.family or bench.preset}-{bench.method}-bs{bench.batch}")
        tunelab, latent_side = (measured, None) if isinstance(measured, dict) else measured
        family_name = tunelab.get("family", bench.family)
        if latent_side is None and bench.family is not None and bench.resolution:
            latent_side = bench.resolution // 8  # every real-size family's VAE
        reference = None
        if bench.reference and family_name is not None and latent_side is not None:
            resolution = tunelab.get("resolution", bench.resolution)
            reference = _guarded(lambda: time_reference(bench, family_name, resolution, latent_side, device),
                                 REFERENCE_CASES.get((family_name, method_class(bench.method).reference_mode)))
        if reference is not None:
            record(dict(side="reference", **(_with_utilisation(reference, peak) if "error" not in reference else reference)))
        record(dict(side="tunelab", **(_with_utilisation(tunelab, peak) if "error" not in tunelab else tunelab)))
        if reference is not None and "error" not in reference and "error" not in tunelab:
            record(_ratio(tunelab, reference))
    finally:
        if out is not None:
            out.close()
    return rows
