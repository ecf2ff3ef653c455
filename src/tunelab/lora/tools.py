"""The LoRA tools on files: extract, merge, combine, resize, convert, info, precision report.

Each reads its files through `tunelab.formats`, works on format-free LoRA sets (the maths in this
folder) and writes through `tunelab.formats` again. `tunelab lora <tool>` and the Python API
(`tunelab.lora.extract(...)`, ...) both call these functions with the same options dataclasses.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from tunelab.config import option, parse_weighted_path
from tunelab.errors import TunelabError
from tunelab.formats.lora_io import base_model_version, encoded_size, output_metadata, read_lora_file, write_lora
from tunelab.formats.sd_checkpoint import save_single_file
from tunelab.lora.combining import WeightedLora, combine_svd, concat
from tunelab.lora.extraction import ExtractSettings, differences_outside, extract_lora
from tunelab.lora.merging import apply_loras, check_fits
from tunelab.lora.modules import adaptable_modules, module_weights
from tunelab.lora.precision import PRECISIONS, PROBE_TIMESTEPS, denoiser_probe, precision_deviations
from tunelab.lora.resizing import Dynamic, resize_lora
from tunelab.lora.summary import human_size, render, summarize
from tunelab.models.family import family_for
from tunelab.models.loading import load_pipeline
from tunelab.precision import PrecisionName, precision_dtype

Precision = PrecisionName
LoraLayout = Literal["kohya", "peft"]


# Positional arguments: resolved with the options (so they get the same type checks), parsed by hand.
@dataclass
class FileInput:
    file: str = option("LoRA file (kohya, LyCORIS LoCon/LoHa/LoKr/DoRA or PEFT/diffusers .safetensors)")


@dataclass
class LorasInput:
    loras: list[str] = option("LoRA files, each with an optional weight: FILE[:WEIGHT]")


@dataclass
class ExtractOptions:
    base: str = option("base model: preset name, diffusers folder or checkpoint file")
    tuned: str = option("fine-tuned model of the same architecture (e.g. a DreamBooth result)")
    out: str = option("output LoRA file (.safetensors)")
    rank: int = option("rank of linear layers and 1x1 convolutions (a module that allows less gets its full rank)")
    alpha: float | None = option("alpha of every module (default: --rank); each module's alpha / rank is folded into its up", default=None)
    conv_rank: int | None = option("rank of 3x3 convolutions; without it they are left out", default=None)
    clamp_quantile: float = option("quantile that limits the factors' values (1: no clamp); modules the rank holds exactly are never clamped", default=0.99)
    clamp_mode: Literal["absolute", "kohya"] = option(
        "absolute (default): clamp both factors to the quantile of their pooled absolute values (1%% of values clipped "
        "at 0.99); kohya: to the quantile of their pooled signed values, the rule of kohya's script (about 2%% clipped)",
        default="absolute",
    )
    modules: Literal["all", "kohya"] = option(
        "all (default): every Linear and 1x1 conv of UNet and text encoder, 3x3 convs too with --conv-rank; kohya: the "
        "modules kohya's script extracts (UNet attention blocks and text encoder; resnets and samplers with --conv-rank)",
        default="all",
    )
    min_diff: float = option("leave the text encoder out when none of its weights differs by more than this", default=0.01)
    precision: Precision = option("dtype of the saved LoRA", default="fp32")
    format: LoraLayout = option("file layout: kohya (A1111, ComfyUI, diffusers) or peft (diffusers' save_lora_weights)", default="kohya")
    device: str = option("torch device for the SVDs: auto (CUDA when present), cpu, cuda, cuda:1, ...", default="auto")


@dataclass
class MergeOptions:
    model: str = option("model to merge into: preset name, diffusers folder or checkpoint file")
    out: str = option("output: a folder (diffusers) or a .safetensors file (single-file)")
    lora: list[str] = option("LoRA file with optional weight, FILE[:WEIGHT]; repeat the flag for several", repeat=True, default_factory=list)
    format: Literal["diffusers", "single-file"] | None = option(
        "output layout (default: single-file when --out ends in .safetensors, else diffusers)", default=None
    )
    precision: Precision = option("dtype of the saved model", default="fp32")


@dataclass
class CombineOptions:
    out: str = option("output LoRA file (.safetensors)")
    mode: Literal["concat", "svd"] = option("concat: stack ranks (exactly the weighted sum); svd: re-factorise the sum at --rank", default="concat")
    rank: int | None = option("rank of the result (svd mode)", default=None)
    format: LoraLayout | None = option("file layout (default: that of the first input)", default=None)
    precision: Precision | None = option("dtype of the result (default: that of the inputs, fp32 if they differ)", default=None)


@dataclass
class ResizeOptions:
    out: str = option("output LoRA file (.safetensors)")
    rank: int | None = option("new rank; with --dynamic, the largest rank it may choose", default=None)
    dynamic: str | None = option("rank per module from its spectrum: sv_ratio=X, sv_fro=X or sv_cumulative=X", default=None)
    format: LoraLayout | None = option("file layout (default: that of the input)", default=None)
    precision: Precision | None = option("dtype of the result (default: that of the input)", default=None)


@dataclass
class ConvertOptions:
    to: LoraLayout = option("layout to write")
    out: str = option("output LoRA file (.safetensors)")
    precision: Precision | None = option("dtype of the result (default: that of the input)", default=None)


@dataclass
class InfoOptions:
    json: bool = option("print the summary as JSON", default=False)
    modules: bool = option("list every module", default=False)


@dataclass
class PrecisionReportOptions:
    model: str = option("model the LoRA is for: preset name, diffusers folder or checkpoint file")
    prompt: str = option("prompt the denoiser is conditioned on", default="a photo")
    seed: int = option("seed of the fixed noise the denoiser sees", default=0)
    weight: float = option("LoRA weight", default=1.0)
    device: str = option("torch device: auto (CUDA when present), cpu, cuda, ...", default="auto")


# ----------------------------------------------------------------------------- helpers


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TunelabError(f"--device {name}: no CUDA device is available")
    return name


def _lora_out(out: str) -> Path:
    path = Path(out)
    if path.suffix.lower() != ".safetensors":
        raise TunelabError(f"LoRA files are written as .safetensors, not {path.suffix or 'a file without extension'} ({path})")
    return path


def _common_dtype(loras):
    """The one dtype all the inputs' factors share, else float32."""
    dtypes = {module.dtype for lora in loras for module in lora.values()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def _save_lora(lora, out: str, file_format: str, dtype, carried: dict[str, str], base_version: str) -> Path:
    lora = {key: module.to(dtype) for key, module in lora.items()}
    path = write_lora(lora, _lora_out(out), file_format, output_metadata(lora, file_format, carried, base_version))
    ranks = sorted({module.rank for module in lora.values() if module.rank is not None})  # None: a LoKr of full factors
    rank_text = "full" if not ranks else str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"
    print(f"wrote {path} ({len(lora)} modules, rank {rank_text}, {file_format}, {str(dtype).removeprefix('torch.')})")
    return path


def _record(options) -> str:
    return json.dumps(asdict(options), sort_keys=True)


def _model_modules(reference: str):
    pipeline = load_pipeline(reference)
    return pipeline, adaptable_modules(pipeline)


def _read_for_model(path: Path, modules):
    """A LoRA read against a model: kohya names resolve exactly, and every module must fit."""
    loaded = read_lora_file(path, modules.keys())
    check_fits(loaded.lora, {key: tuple(module.weight.shape) for key, module in modules.items()}, path.name)
    return loaded


def _print_kept(report) -> None:
    for row in report:
        print(f"  {row.key}  rank {row.old_rank} -> {row.new_rank}  keeps {row.frobenius_kept:.2%} (Frobenius)")
    if report:
        shares = [row.frobenius_kept for row in report]
        print(f"{len(report)} modules; Frobenius share kept: mean {sum(shares) / len(shares):.2%}, lowest {min(shares):.2%}")


# ----------------------------------------------------------------------------- tools


def extract(options: ExtractOptions) -> Path:
    settings = ExtractSettings(options.rank, options.conv_rank, options.alpha, options.clamp_quantile, options.min_diff,
                               options.clamp_mode, options.modules)
    settings.validate()
    device = _device(options.device)
    _lora_out(options.out)
    base, base_modules = _model_modules(options.base)
    tuned, tuned_modules = _model_modules(options.tuned)
    if type(base) is not type(tuned):
        raise TunelabError(f"the base and tuned models have different architectures: {type(base).__name__} vs {type(tuned).__name__}")
    extraction = extract_lora(module_weights(base_modules), module_weights(tuned_modules), settings, device)
    for note in extraction.notes:
        print(note)
    _print_differences_outside(base, tuned, base_modules)
    carried = {"tunelab_extract": _record(options)}
    version = family_for(base).base_model_version
    return _save_lora(extraction.lora, options.out, options.format, precision_dtype(options.precision), carried, version)


def _print_differences_outside(base, tuned, base_modules) -> None:
    """Say which changes the LoRA leaves behind: biases, norms, embeddings of the components it covers."""
    family = family_for(base)
    in_lora_reach = {id(module.weight) for module in base_modules.values()}
    for component in (family.denoiser_name, *family.text_encoder_names):
        base_part, tuned_part = getattr(base, component), getattr(tuned, component)
        covered = {name for name, parameter in base_part.named_parameters() if id(parameter) in in_lora_reach}
        changed, largest = differences_outside(base_part.state_dict(), tuned_part.state_dict(), covered)
        if changed:
            print(f"{component}: tensors a LoRA cannot hold (biases, norms, embeddings) differ too and are left out: {changed}, by at most {largest:.3g}")


def merge(options: MergeOptions) -> Path:
    if not options.lora:
        raise TunelabError("give at least one --lora FILE[:WEIGHT] to merge")
    out = Path(options.out)
    file_format = options.format or ("single-file" if out.suffix.lower() == ".safetensors" else "diffusers")
    pipeline, modules = _model_modules(options.model)
    weighted = []
    for spec in options.lora:
        path, weight = parse_weighted_path(spec)
        weighted.append((_read_for_model(path, modules).lora, weight))
    apply_loras(modules, weighted)
    dtype = precision_dtype(options.precision)
    if file_format == "single-file":
        save_single_file(pipeline, out, dtype=dtype, metadata={"tunelab_merge": _record(options)})
    else:
        if out.suffix.lower() == ".safetensors":
            raise TunelabError(f"--format diffusers writes a folder, not a .safetensors file ({out})")
        pipeline.to(dtype=dtype).save_pretrained(out)
    print(f"wrote {out} ({file_format}, {options.precision}, {len(weighted)} LoRA{'s' if len(weighted) > 1 else ''} merged)")
    return out


def combine(inputs: LorasInput, options: CombineOptions) -> Path:
    if options.mode == "svd" and options.rank is None:
        raise TunelabError("--mode svd needs --rank")
    if options.mode == "concat" and options.rank is not None:
        raise TunelabError("--rank applies to --mode svd; concat keeps every rank (resize the result to change it)")
    files, weighted = [], []
    for spec in inputs.loras:
        path, weight = parse_weighted_path(spec)
        files.append(read_lora_file(path))
        weighted.append(WeightedLora(files[-1].lora, weight, path.name))
    if options.mode == "concat":
        combined = concat(weighted)
    else:
        combined, report = combine_svd(weighted, options.rank)
        _print_kept(report)
    versions = {base_model_version(loaded.lora, loaded.metadata) for loaded in files} - {"unknown"}
    if len(versions) > 1:
        raise TunelabError(f"the LoRAs are for different base models ({', '.join(sorted(versions))})")
    carried = {"tunelab_combine": json.dumps({**asdict(options), "loras": inputs.loras}, sort_keys=True)}
    dtype = precision_dtype(options.precision) if options.precision else _common_dtype(loaded.lora for loaded in files)
    return _save_lora(combined, options.out, options.format or files[0].format, dtype, carried, versions.pop() if versions else "unknown")


def resize(inputs: FileInput, options: ResizeOptions) -> Path:
    loaded = read_lora_file(inputs.file)
    dynamic = Dynamic.parse(options.dynamic) if options.dynamic is not None else None
    resized, report = resize_lora(loaded.lora, options.rank, dynamic)
    _print_kept(report)
    carried = {**loaded.metadata, "tunelab_resize": _record(options)}
    dtype = precision_dtype(options.precision) if options.precision else _common_dtype([loaded.lora])
    version = base_model_version(loaded.lora, loaded.metadata)
    return _save_lora(resized, options.out, options.format or loaded.format, dtype, carried, version)


def convert(inputs: FileInput, options: ConvertOptions) -> Path:
    loaded = read_lora_file(inputs.file)
    dtype = precision_dtype(options.precision) if options.precision else _common_dtype([loaded.lora])
    version = base_model_version(loaded.lora, loaded.metadata)
    return _save_lora(loaded.lora, options.out, options.to, dtype, loaded.metadata, version)


def summary_of(inputs: FileInput) -> dict:
    """The file's summary: modules, ranks, alphas, precision, size, metadata."""
    loaded = read_lora_file(inputs.file)
    return summarize(loaded.lora, loaded.metadata, loaded.format, loaded.path)


def info(inputs: FileInput, options: InfoOptions) -> dict:
    """The summary, printed as text or JSON."""
    summary = summary_of(inputs)
    print(json.dumps(summary, indent=2) if options.json else render(summary, options.modules))
    return summary


def precision_report(inputs: FileInput, options: PrecisionReportOptions) -> None:
    pipeline, modules = _model_modules(options.model)
    pipeline.to(_device(options.device))
    loaded = _read_for_model(Path(inputs.file), modules)
    deviations, effect = precision_deviations(modules, loaded.lora, denoiser_probe(pipeline, options.prompt, options.seed), options.weight)
    print(f"{loaded.path.name} on {options.model}: denoiser output at timesteps {'/'.join(map(str, PROBE_TIMESTEPS))}, "
          f"prompt {options.prompt!r}, LoRA weight {options.weight:g}; the model runs in fp32, the LoRA is rounded to each precision")
    print(f"{'precision':<10} {'file size':>12} {'max |dev|':>11} {'rms dev':>11} {'dev / effect':>13}")
    for row in deviations:
        lora = {key: module.to(PRECISIONS[row.precision]) for key, module in loaded.lora.items()}
        size = encoded_size(lora, loaded.format, loaded.metadata)
        print(f"{row.precision:<10} {human_size(size):>12} {row.max_abs:>11.3g} {row.rms:>11.3g} {row.relative:>13.3%}")
    print(f"dev: difference from the fp32 LoRA's output; effect: rms of the fp32 LoRA's own change to the output ({effect:.3g})")
