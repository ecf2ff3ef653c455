#!/usr/bin/env python3
"""Seconds per step and peak GPU memory of training on real-size SDXL and Flux.1 (random weights).

Cases (issue 7): SDXL LoRA, SDXL full fine-tuning (DreamBooth), Flux.1-dev LoRA, each at
1024x1024, batch 1, bf16 mixed precision (frozen weights bf16, trained weights fp32) with
gradient checkpointing. Each case runs `tunelab bench speed` (the trainer's own step,
training/step.py, on a model built from the configs shipped under models/configs/) in a fresh
process, so one case's memory does not count against the next; the JSON rows are collected
and printed as a markdown table that names the device, for docs/benchmarks.md.

On a GPU machine, from the repository root:

    .venv/bin/python benchmarks/sdxl_flux.py --out .bench/sdxl_flux.md

Check the script itself on a CPU (tiny presets, small images; the numbers mean nothing):

    .venv/bin/python benchmarks/sdxl_flux.py --tiny --steps 1 --warmup-steps 1
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (label, family or tiny preset, technique)
CASES = [
    ("SDXL LoRA (rank 32)", "sdxl", "tiny-sdxl", "lora"),
    ("SDXL full fine-tuning (DreamBooth)", "sdxl", "tiny-sdxl", "dreambooth"),
    ("Flux.1-dev LoRA (rank 16)", "flux", "tiny-flux", "lora"),
]
TRAIN_SETTINGS = ["--mixed-precision", "bf16", "--gradient-checkpointing"]


def bench_command(python: str, model: list[str], technique: str, resolution: int, steps: int, warmup: int, out: Path,
                  extra: list[str]) -> list[str]:
    return [
        python, "-m", "tunelab.cli", "bench", "speed", *model, "--method", technique, "--batch", "1",
        "--resolution", str(resolution), "--steps", str(steps), "--warmup-steps", str(warmup), "--out", str(out),
        *TRAIN_SETTINGS, *extra,
    ]


def device_description(python: str) -> str:
    probe = (
        "import torch; print(torch.cuda.get_device_name(0) + f' ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)'"
        " if torch.cuda.is_available() else 'CPU only'); print(torch.__version__)"
    )
    device, torch_version = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")[:2]
    return f"{device}; torch {torch_version}; {platform.node()}"


def table(rows: list[tuple[str, dict | None, str]], device: str, settings: str) -> str:
    lines = [
        f"Device: {device}. Settings: {settings}. Date: {time.strftime('%Y-%m-%d')}.",
        "",
        "| case | resolution | s/step | peak GiB | denoiser params (M) | trained params (M) | reference s/step | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, row, note in rows:
        if row is None:
            lines.append(f"| {label} | | | | | | | {note} |")
            continue
        reference = row.get("reference_s_per_step", "")
        lines.append(
            f"| {label} | {row['resolution']} | {row['s_per_step']} | {row.get('peak_gib') or 'n/a'} | {row['params_m']} | "
            f"{row['trainable_m']} | {reference} | {note} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny presets at 32 px on any machine: checks the script, not speed")
    parser.add_argument("--resolution", type=int, default=None, help="image side (default 1024; 32 with --tiny)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--no-reference", action="store_true", help="skip the reference step (faster)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per case")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    resolution = args.resolution or (32 if args.tiny else 1024)
    extra = ["--no-reference"] if args.no_reference or args.tiny else []

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (label, family, preset, technique) in enumerate(CASES):
            out = Path(folder) / f"case{index}.jsonl"
            model = ["--preset", preset] if args.tiny else ["--family", family]
            command = bench_command(args.python, model, technique, resolution, args.steps, args.warmup_steps, out, extra)
            print("$", " ".join(command), flush=True)
            try:
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                rows.append((label, None, f"timed out after {args.timeout} s"))
                continue
            results = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
            tunelab = next((row for row in results if row.get("side") == "tunelab"), None)
            if done.returncode != 0 or tunelab is None:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append((label, None, f"failed (exit {done.returncode}): {last[:160]}"))
                continue
            reference = next((row for row in results if row.get("side") == "reference" and "s_per_step" in row), None)
            if reference is not None:
                tunelab = {**tunelab, "reference_s_per_step": reference["s_per_step"]}
            rows.append((label, tunelab, ""))
    settings = f"batch 1, {' '.join(TRAIN_SETTINGS)}, {args.steps} timed steps after {args.warmup_steps} warm-up"
    report = table(rows, device_description(args.python), settings)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0 if all(row is not None for _, row, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
