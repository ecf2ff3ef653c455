"""One stage of pretraining: steps of an optimizer with a cosine rate, checkpoints to resume from, progress lines.

Each step draws from a seed of its own (the run's seed, the stage, the step), so a resumed stage takes the
same steps as an unbroken one.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch

from tunelab.formats.safetensors_io import save_torch_tree
from tunelab.safe_load import load_torch_tree


def cosine_rate(step: int, steps: int) -> float:
    """Full rate down to a tenth along a half cosine."""
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))


def run_stage(name: str, steps: int, parameters: list[torch.Tensor], optimizer: torch.optim.Optimizer,
              loss_at: Callable[[int], torch.Tensor], checkpoint: Path, every: int, log: Callable[[str], None],
              log_every: int = 50) -> None:
    """Train `parameters` for `steps`; resumes from `checkpoint` if it is there (a finished stage is skipped)."""
    start = 0
    if checkpoint.is_file():
        state = load_torch_tree(checkpoint)
        with torch.no_grad():
            for parameter, saved in zip(parameters, state["parameters"]):
                parameter.copy_(saved)
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        log(f"{name}: resumed at step {start}/{steps}" if start < steps else f"{name}: done before, skipped")
    rates = [group["lr"] for group in optimizer.param_groups] if start == 0 else [group["initial_lr"] for group in optimizer.param_groups]
    for group, rate in zip(optimizer.param_groups, rates):
        group["initial_lr"] = rate
    began, recent = time.perf_counter(), []
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * cosine_rate(step, steps)
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recent.append(loss.item())
        done = step + 1
        if done % log_every == 0 or done == steps:
            left = (time.perf_counter() - began) / (done - start) * (steps - done)
            log(f"{name}: step {done}/{steps} loss {sum(recent) / len(recent):.4f} ({left / 60:.1f} min left)")
            recent = []
        if done % every == 0 or done == steps:
            save_torch_tree({"step": done, "parameters": [p.detach() for p in parameters], "optimizer": optimizer.state_dict()},
                            checkpoint)
