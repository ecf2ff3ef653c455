#!/usr/bin/env python3
"""Benchmark: extract a rank-128 LoRA from an SD 1.5-sized model pair with random weights.

The pair is built from tunelab's shipped SD 1.5 config (`src/tunelab/models/configs/sd15`):
a real-size UNet2DConditionModel (860M parameters) and CLIP ViT-L text encoder (123M),
random weights, and a "tuned" copy whose every weight moved by full-rank noise (as a
DreamBooth run moves them). What is timed is `tunelab.lora.extraction.extract_lora` on the
two models' module weights: differences, batched truncated SVDs, clamping, factors back
on the CPU; then writing the file. Building the models is reported but not part of it.

    python benchmarks/lora_extract.py                      # CPU, rank 128, tunelab's defaults
    python benchmarks/lora_extract.py --clamp-mode kohya --modules kohya   # kohya's rule and module set
    python benchmarks/lora_extract.py --device cuda        # on a GPU
    python benchmarks/lora_extract.py --conv-rank 128      # 3x3 convolutions too

Prints a markdown report (machine, command, numbers); --json FILE also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_model  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

SD15 = ROOT / "src" / "tunelab" / "models" / "configs" / "sd15"


def random_sd15_pair(seed: int, noise: float):
    """(base, tuned) module-weight dicts keyed like a LoRA set, for a real-size SD 1.5 UNet + text encoder."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tunelab.lora.modules import ADAPTABLE_TYPES

    with torch.device("meta"):  # shapes only: the random weights are made below
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15 / "unet"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15 / "text_encoder"))
    generator = torch.Generator().manual_seed(seed)
    base, tuned = {}, {}
    parameters = 0
    for component, model in (("unet", unet), ("text_encoder", text_encoder)):
        parameters += sum(p.numel() for p in model.parameters())  # meta tensors know their sizes
        for path, module in model.named_modules():
            if isinstance(module, ADAPTABLE_TYPES):
                weight = torch.randn(module.weight.shape, generator=generator) * 0.02  # (out, in[, kh, kw])
                base[f"{component}.{path}"] = weight
                tuned[f"{component}.{path}"] = weight + torch.randn(weight.shape, generator=generator) * noise
    return base, tuned, parameters


def machine() -> dict:
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_before": os.getloadavg()[0],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--conv-rank", type=int, default=None)
    parser.add_argument("--clamp-quantile", type=float, default=0.99)
    parser.add_argument("--clamp-mode", choices=["absolute", "kohya"], default="absolute")
    parser.add_argument("--modules", choices=["all", "kohya"], default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--noise", type=float, default=0.002, help="std of the full-rank change of every weight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import diffusers
    import transformers

    from tunelab.formats.kohya_lora import kohya_metadata
    from tunelab.formats.lora_io import write_lora
    from tunelab.lora.extraction import ExtractSettings, extract_lora

    info = machine()
    info.update(diffusers=diffusers.__version__, transformers=transformers.__version__, device=args.device)
    started = time.perf_counter()
    base, tuned, parameters = random_sd15_pair(args.seed, args.noise)
    build_s = time.perf_counter() - started

    settings = ExtractSettings(rank=args.rank, conv_rank=args.conv_rank, clamp_quantile=args.clamp_quantile,
                               clamp_mode=args.clamp_mode, modules=args.modules)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    extraction = extract_lora(base, tuned, settings, device=args.device, progress=sys.stderr.isatty())
    extract_s = time.perf_counter() - started

    lora = {key: module.to(torch.float16) for key, module in extraction.lora.items()}
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        path = write_lora(lora, Path(folder) / "lora.safetensors", "kohya", kohya_metadata(lora, "sd_v1"))
        write_s = time.perf_counter() - started
        size = path.stat().st_size

    results = {
        **info,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model_parameters": parameters,
        "modules": len(extraction.lora),
        "rank": args.rank,
        "conv_rank": args.conv_rank,
        "clamp": f"{args.clamp_mode} {args.clamp_quantile:g}",
        "modules_set": args.modules,
        "build_s": round(build_s, 2),
        "extract_s": round(extract_s, 2),
        "write_fp16_s": round(write_s, 2),
        "file_mib": round(size / 2**20, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "load_average_after": os.getloadavg()[0],
        "notes": extraction.notes,
    }
    print("| machine | device | modules | rank | extract (s) | write fp16 (s) | file (MiB) | peak RSS (GiB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    where = results.get("gpu", results["cpu"]) if args.device.startswith("cuda") else f"{results['cpu']}, {results['torch_threads']} threads"
    print(f"| {where} | {args.device} | {results['modules']} | {args.rank} | {results['extract_s']} | "
          f"{results['write_fp16_s']} | {results['file_mib']} | {results['peak_rss_gib']} |")
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
