#!/usr/bin/env python3
"""Issue 9's GPU table in one run: every target row, reference and tunelab side by side.

Each row is one `tunelab bench speed` process (a fresh CUDA context, so one failing row cannot
take the others with it); each process times tunelab's training step and then the reference
step, and appends its JSON lines to OUT/speed.jsonl (its output goes to OUT/rows.log). Rows run in order of importance until the
time budget (default 450 s, under the 8 minutes a lent device allows for this) is spent: first
the four target rows with the bench's default settings and an SD3.5 Medium LoRA row (issue 20), then (see plan()) regional torch.compile
on the two LoRA targets, SDXL full fine-tuning at batch 4 (the MFU target), cuDNN attention on
SDXL LoRA, and compile on the other two targets. A row that would start with
less than its minimum time left is skipped and said so. The Flux rows give the reference
--no-cudnn-sdp (its cuDNN attention backward failed on Flux shapes with torch 2.11/cu130).

    python benchmarks/gpu_speed.py --out $OUT              # on the GPU machine, from the repository root
                                                           # (benchmarks/README.md: carrying diffusers there)
    python benchmarks/gpu_speed.py --tiny --out /tmp/x     # the same rows on tiny presets: a CPU check
    python benchmarks/gpu_speed.py --table OUT/speed.jsonl # markdown table for docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# name, bench arguments, tiny preset for --tiny, least seconds to start it
TARGETS = [
    ("sd15-lora32-bs4-512", ["--family", "sd", "--method", "lora", "--rank", "32", "--batch", "4", "--resolution", "512"],
     "tiny-sd", 40),
    ("sdxl-lora32-bs4-1024", ["--family", "sdxl", "--method", "lora", "--rank", "32", "--batch", "4", "--resolution", "1024"],
     "tiny-sdxl", 60),
    ("sdxl-full-bs1-1024", ["--family", "sdxl", "--method", "dreambooth", "--batch", "1", "--resolution", "1024"],
     "tiny-sdxl", 60),
    ("flux1024-lora16-bs1", ["--family", "flux", "--method", "lora", "--rank", "16", "--batch", "1", "--resolution", "1024",
                             "--no-reference-cudnn-sdp"], "tiny-flux", 90),
]
# SD3.5 Medium (issue 20), right after the targets: tunelab only, the reference step has no SD3 case.
SD35_MEDIUM = ("sd35m-lora16-bs1-1024", ["--family", "sd3", "--method", "lora", "--rank", "16", "--batch", "1", "--resolution",
                                         "1024"], "tiny-sd3", 60)
COMPILED = ["--compile", "regional"]


def plan() -> list[tuple[str, list[str], str, int]]:
    """The target rows first; then, while time is left, what tells most about the 2x targets and MFU."""
    by_name = {name: (args, tiny, least) for name, args, tiny, least in TARGETS}

    def variant(name: str, suffix: str, extra: list[str], more: int):
        args, tiny, least = by_name[name]
        return (f"{name}+{suffix}", args + extra, tiny, least + more)

    return [
        *TARGETS,
        SD35_MEDIUM,
        variant("sd15-lora32-bs4-512", "compile", COMPILED, 60),
        variant("sdxl-lora32-bs4-1024", "compile", COMPILED, 60),
        # The MFU target (SDXL full fine-tuning, batch 4): selective checkpointing keeps every matmul's
        # output (so no FLOP is counted twice) but fits batch 4 in 80 GB; tunelab only.
        ("sdxl-full-bs4-1024+selective", ["--family", "sdxl", "--method", "dreambooth", "--batch", "4", "--resolution",
                                          "1024", "--gradient-checkpointing", "--gradient-checkpointing-mode", "selective",
                                          "--no-reference"], "tiny-sdxl", 70),
        variant("sdxl-lora32-bs4-1024", "cudnn", ["--attention-backend", "cudnn"], 0),
        variant("sdxl-full-bs1-1024", "compile", COMPILED, 60),
        variant("flux1024-lora16-bs1", "compile", COMPILED, 60),
    ]


def bench_arguments(args: list[str], tiny: str | None, steps: int) -> list[str]:
    """The row's `tunelab bench speed` arguments; with a tiny preset, its family, size and rank swapped for the
    preset's (a real-size rank is wider than a tiny preset's layers)."""
    if tiny is None:
        return [*args, "--steps", str(steps)]
    swapped, skip = [], False
    for index, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg in ("--family", "--resolution", "--rank", "--attention-backend"):  # (cuDNN attention needs CUDA)
            skip = True
            continue
        swapped.append(arg)
    return ["--preset", tiny, *swapped, "--steps", str(steps), "--warmup-steps", "1"]


def run(out: Path, budget: float, steps: int, tiny: bool, only: list[str] | None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    # Two files only (a lent machine sends back few): the JSON lines, and every row's output in one log.
    results, log_file = out / "speed.jsonl", out / "rows.log"
    deadline = time.monotonic() + budget
    failures = 0
    for name, args, preset, least in plan():
        if only and name not in only:
            continue
        left = deadline - time.monotonic()
        if left < (5 if tiny else least):
            print(f"{name}: skipped, {left:.0f} s left of the budget", flush=True)
            with results.open("a") as handle:
                handle.write(json.dumps({"side": "skipped", "row": name, "seconds_left": round(left)}) + "\n")
            continue
        with results.open("a") as handle:  # the lines that follow, up to the next marker, are this row's
            handle.write(json.dumps({"side": "row", "row": name}) + "\n")
        command = [sys.executable, "-m", "tunelab.cli", "bench", "speed",
                   *bench_arguments(args, preset if tiny else None, steps), "--out", str(results)]
        started = time.monotonic()
        with log_file.open("a") as log:
            log.write(f"\n== {name}: " + " ".join(command) + "\n")
            log.flush()
            try:
                code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=left,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        print(f"{name}: exit {code} in {time.monotonic() - started:.0f} s", flush=True)
        if code != 0:
            failures += 1
            with results.open("a") as handle:
                handle.write(json.dumps({"side": "failed", "row": name, "exit": code, "log": "rows.log"}) + "\n")
    return 1 if failures else 0


def table(path: Path) -> str:
    """Reference vs tunelab per row, then the ratios, as markdown."""
    sides = ["| row | side | case | s/step | images/s | peak GiB | TFLOP/s | MFU | warm-up s | 4500-step run s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    ratios = ["| row | images/s tunelab / reference | peak memory tunelab / reference | 4500-step run speed-up |",
              "|---|---:|---:|---:|"]
    devices, name = [], "?"
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["side"] == "row":
            name = row["row"]
        elif row["side"] == "device":
            device = f"{row['device']} (torch {row['torch']})"
            devices += [device] if device not in devices else []
        elif row["side"] in ("reference", "tunelab") and "error" in row:
            sides.append(f"| {name} | {row['side']} | {row['case']} | error: {row['error'][:80]} | | | | | | |")
        elif row["side"] in ("reference", "tunelab"):
            sides.append(f"| {name} | {row['side']} | {row['case']} | {row['s_per_step']} | {row['images_per_s']} | "
                         f"{row['peak_gib']} | {row['achieved_tflops']} | {row['mfu']} | {row['warmup_s']} | {row['run_4500_s']} |")
        elif row["side"] == "ratio":
            ratios.append(f"| {name} | {row['images_per_s']} | {row['peak_memory']} | {row['speedup_run_4500_s']} |")
        elif row["side"] in ("failed", "skipped"):
            ratios.append(f"| {row['row']} | {row['side']} | | |")
    return "\n".join([f"Device: {', '.join(devices)}", "", *sides, "", *ratios])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for speed.jsonl and rows.log")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all rows together")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side")
    parser.add_argument("--tiny", action="store_true", help="tiny presets instead of real sizes (a CPU check)")
    parser.add_argument("--only", nargs="+", help="run only these rows")
    parser.add_argument("--table", type=Path, help="print the markdown table of a speed.jsonl and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return 0
    if args.out is None:
        parser.error("--out is required")
    return run(args.out, args.budget, args.steps, args.tiny, args.only)


if __name__ == "__main__":
    sys.exit(main())
