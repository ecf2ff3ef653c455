#!/usr/bin/env python3
"""Side by side: `tunelab lora extract` and kohya's networks/extract_lora_from_models.py on one SD 1.5-sized pair.

Three steps, each its own process so that one tool's memory does not count against the other:

    python benchmarks/lora_extract_vs_kohya.py make-pair DIR          # DIR/base.safetensors, DIR/tuned.safetensors
    python benchmarks/lora_extract_vs_kohya.py time --label NAME --log DIR/runs.jsonl --out FILE -- COMMAND...
    python benchmarks/lora_extract_vs_kohya.py compare --base DIR/base.safetensors --tuned DIR/tuned.safetensors FILE...
    python benchmarks/lora_extract_vs_kohya.py sign-check --base ... --tuned ... KOHYA_FILE TUNELAB_KOHYA_FILE MODULE...

make-pair builds Stable Diffusion 1.5 from tunelab's shipped config (UNet 860M, CLIP ViT-L text
encoder 123M, VAE 84M parameters) with random weights and writes it as an original-layout
single-file checkpoint, the input both tools read; the tuned copy has full-rank noise added to
every Linear and Conv2d weight of UNet and text encoder, as a DreamBooth run moves them. Nothing
is downloaded. `time` runs one command and appends its wall time, peak RSS, CPU time and the CPU
other processes used meanwhile. `compare` reads the checkpoints back, takes the true difference
of each module, and for each LoRA file reports its modules, size, how close each module's delta
is to the true difference, and how far it is from the first file's. `sign-check` applies kohya's
rule to chosen modules twice, on LAPACK's SVD as it comes and with tunelab's sign convention, and
says how close each file is to each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from lora_vs_diffusers import cpu_busy_seconds  # beside this script too
from machine import cpu_model  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

SD15 = ROOT / "src" / "tunelab" / "models" / "configs" / "sd15"


def make_pair(folder: Path, seed: int, noise: float) -> None:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from tunelab.formats.sd_checkpoint import save_single_file
    from tunelab.lora.modules import ADAPTABLE_TYPES

    torch.manual_seed(seed)
    pipeline = StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(SD15 / "vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(SD15 / "text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(SD15 / "tokenizer"),
        unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15 / "unet")),
        scheduler=PNDMScheduler.from_config(PNDMScheduler.load_config(SD15 / "scheduler")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_single_file(pipeline, folder / "base.safetensors", dtype=torch.float16)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for model in (pipeline.unet, pipeline.text_encoder):
            for module in model.modules():
                if isinstance(module, ADAPTABLE_TYPES):
                    module.weight += torch.randn(module.weight.shape, generator=generator) * noise  # (out, in[, kh, kw])
    save_single_file(pipeline, folder / "tuned.safetensors", dtype=torch.float16)
    print(f"wrote {folder / 'base.safetensors'} and {folder / 'tuned.safetensors'} (fp16, noise std {noise:g})")


def time_command(label: str, command: list[str], out: Path, log: Path) -> None:
    load_before = os.getloadavg()[0]
    busy_before = cpu_busy_seconds()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    busy = cpu_busy_seconds() - busy_before
    cpu = usage.ru_utime + usage.ru_stime
    record = {
        "label": label,
        "command": command,
        "exit": os.waitstatus_to_exitcode(status),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "other_cpu_s": round(max(0.0, busy - cpu), 1),  # what other processes used meanwhile
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),  # Linux reports KiB
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "file_mib": round(out.stat().st_size / 2**20, 1) if out.is_file() else None,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
    }
    with open(log, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(json.dumps(record))


def _module_weights(model: str) -> dict[str, torch.Tensor]:
    from tunelab.lora.modules import adaptable_modules, module_weights
    from tunelab.models.loading import load_pipeline

    pipeline = load_pipeline(model)
    return {key: weight.clone() for key, weight in module_weights(adaptable_modules(pipeline)).items()}


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


def _spread(values: dict[str, float]) -> dict:
    if not values:
        return {}
    largest = max(values, key=values.get)
    return {"median": round(statistics.median(values.values()), 5), "max": round(values[largest], 5), "max_module": largest}


def compare(base_model: str, tuned_model: str, files: list[Path]) -> None:
    """Per file: keys, size, share of the difference held, error against the truth; per pair: how far apart."""
    from safetensors import safe_open

    from tunelab.formats.lora_io import read_lora_file

    base = _module_weights(base_model)
    tuned = _module_weights(tuned_model)
    truth = {key: tuned[key] - base[key] for key in base}  # (out, in[, kh, kw]) each, fp32
    del base, tuned
    total_energy = sum(float(delta.square().sum()) for delta in truth.values())
    loras = {path.name: read_lora_file(path, truth.keys()).lora for path in files}
    keys = {path.name: _raw_keys(safe_open, path) for path in files}
    common = sorted(set.intersection(*(set(lora) for lora in loras.values())))
    names = list(loras)
    own_error = {name: {} for name in names}
    pair_difference = {(a, b): {} for index, a in enumerate(names) for b in names[index + 1 :]}
    for key in truth:
        deltas = {name: lora[key].delta() for name, lora in loras.items() if key in lora}  # computed one module at a time
        for name, delta in deltas.items():
            own_error[name][key] = _relative(delta, truth[key])
        if key in common:
            for a, b in pair_difference:
                pair_difference[(a, b)][key] = _relative(deltas[b], deltas[a])
    report = {"common_modules": len(common), "files": [], "pairs": []}
    for path in files:
        name = path.name
        report["files"].append({
            "file": name,
            "modules": len(loras[name]),
            "size_mib": round(path.stat().st_size / 2**20, 1),
            "keys_as_first_file": keys[name] == keys[names[0]],
            # share of the whole difference (squared Frobenius norm) in the modules this file holds
            "difference_share_held": round(sum(float(truth[key].square().sum()) for key in loras[name]) / total_energy, 4),
            "error_vs_truth_common": _spread({key: own_error[name][key] for key in common}),
            "error_vs_truth_own": _spread(own_error[name]),
        })
    for (a, b), differences in pair_difference.items():
        report["pairs"].append({"a": a, "b": b, "relative_difference_common": _spread(differences)})
    print(json.dumps(report, indent=1))


def _kohya_rule(up: torch.Tensor, down: torch.Tensor, quantile: float = 0.99) -> torch.Tensor:
    limit = torch.quantile(torch.cat([up.flatten(), down.flatten()]), quantile)
    return up.clamp(-limit, limit) @ down.clamp(-limit, limit)


def sign_check(base_model: str, tuned_model: str, kohya_file: Path, tunelab_file: Path, keys: list[str], rank: int) -> None:
    """Is the difference between kohya's file and tunelab's kohya mode the signs of the singular vectors?"""
    from tunelab.formats.lora_io import read_lora_file
    from tunelab.lora.svd import with_sign_convention

    base, tuned = _module_weights(base_model), _module_weights(tuned_model)
    kohya, tunelab = read_lora_file(kohya_file, base.keys()).lora, read_lora_file(tunelab_file, base.keys()).lora
    for key in keys:
        difference = (tuned[key] - base[key]).flatten(1)  # (out, in*kh*kw), fp32 as kohya computes it
        u, s, vh = torch.linalg.svd(difference)  # full matrices, as kohya's script calls it
        up, down = u[:, :rank] * s[:rank], vh[:rank]
        as_returned = _kohya_rule(up, down).reshape(base[key].shape)
        fixed_u, fixed_vh = with_sign_convention(u[None, :, :rank], vh[None, :rank])
        with_convention = _kohya_rule(fixed_u[0] * s[:rank], fixed_vh[0]).reshape(base[key].shape)
        print(json.dumps({
            "module": key,
            "kohya_file_vs_rule_on_lapack_signs": round(_relative(kohya[key].delta(), as_returned), 5),
            "tunelab_file_vs_rule_with_convention": round(_relative(tunelab[key].delta(), with_convention), 5),
            "rule_with_convention_vs_on_lapack_signs": round(_relative(with_convention, as_returned), 5),
            "tunelab_file_vs_kohya_file": round(_relative(tunelab[key].delta(), kohya[key].delta()), 5),
        }))


def _raw_keys(safe_open, path: Path) -> set[str]:
    with safe_open(path, "pt") as handle:
        return set(handle.keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    pair = steps.add_parser("make-pair")
    pair.add_argument("folder", type=Path)
    pair.add_argument("--seed", type=int, default=0)
    pair.add_argument("--noise", type=float, default=0.002, help="std of the change of every Linear and Conv2d weight")
    timed = steps.add_parser("time")
    timed.add_argument("--label", required=True)
    timed.add_argument("--log", type=Path, required=True)
    timed.add_argument("--out", type=Path, required=True, help="the file the command writes (its size is reported)")
    timed.add_argument("command", nargs=argparse.REMAINDER)
    compared = steps.add_parser("compare")
    compared.add_argument("--base", required=True, help="base model (make-pair's base.safetensors)")
    compared.add_argument("--tuned", required=True, help="tuned model (make-pair's tuned.safetensors)")
    compared.add_argument("files", type=Path, nargs="+", help="LoRA files; the first is the one the others are compared with")
    signs = steps.add_parser("sign-check")
    signs.add_argument("--base", required=True)
    signs.add_argument("--tuned", required=True)
    signs.add_argument("--rank", type=int, default=128)
    signs.add_argument("kohya_file", type=Path)
    signs.add_argument("tunelab_file", type=Path, help="made with --clamp-mode kohya")
    signs.add_argument("modules", nargs="+", help="module keys, e.g. unet.mid_block.attentions.0.proj_in")
    args = parser.parse_args()
    if args.step == "make-pair":
        make_pair(args.folder, args.seed, args.noise)
    elif args.step == "time":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        time_command(args.label, command, args.out, args.log)
    elif args.step == "compare":
        compare(args.base, args.tuned, args.files)
    else:
        sign_check(args.base, args.tuned, args.kohya_file, args.tunelab_file, args.modules, args.rank)


if __name__ == "__main__":
    main()
