"""`--num-processes N`: start N copies of this very command through accelerate's launcher."""

from __future__ import annotations

import os
import subprocess
import sys

from tunelab.errors import TunelabError


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
    import torch

    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"  # accelerate then uses gloo between CPU processes
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
        "-m", "tunelab.cli", *without_num_processes(argv),
    ]
    code = subprocess.call(command, env=env)
    if code != 0:
        raise TunelabError(f"the {num_processes} training processes stopped with exit status {code} (their messages are above)")
