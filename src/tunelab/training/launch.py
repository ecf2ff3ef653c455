"""`--num-processes N`: start N copies of this very command through accelerate's launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import torch

from tunelab.errors import TunelabError
from tunelab.training.stopping import TrainingInterrupted


def inside_launched_process() -> bool:
    return "WORLD_SIZE" in os.environ  # set by torchrun, which accelerate launch uses


def without_num_processes(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--num-processes":
            skip = True
        elif not arg.startswith("--num-processes="):
            kept.append(arg)
    return kept


def relaunch(argv: list[str], num_processes: int, mixed_precision: str) -> None:
    """Run `tunelab <argv>` in `num_processes` processes with `accelerate launch`, and wait."""
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"  # accelerate then uses gloo between CPU processes
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
        "-m", "tunelab.cli", *without_num_processes(argv),
    ]
    launcher = subprocess.Popen(command, env=env)
    stop = {"requested": False}

    def forward(signum, frame):
        # A scheduler's SIGTERM (or a Ctrl-C) reaches this process. The training processes get it
        # (they then stop together, with a checkpoint); torchrun's agent would kill them instead.
        stop["requested"] = True
        for pid in _children(launcher.pid) or [launcher.pid]:
            os.kill(pid, signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = launcher.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stop["requested"]:
        raise TrainingInterrupted("training stopped on request (see above); continue with the same command and --resume latest")
    if code != 0:
        raise TunelabError(f"the {num_processes} training processes stopped with exit status {code} (their messages are above)")


def _children(pid: int) -> list[int]:
    """Direct child processes (Linux /proc); empty where that is not available."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(child) for child in listing.read().split()]
    except OSError:
        return []
