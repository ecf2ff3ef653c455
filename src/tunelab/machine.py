"""What machine a run happened on, for reports, model cards and benchmarks."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "?"


def describe(threads: int | None = None) -> str:
    """One line: the accelerator if torch sees one, else the CPU, its core count and the threads used."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    used = f", {threads} torch thread{'s' if threads != 1 else ''}" if threads else ""
    return f"{cpu_model()}, {cores} cores{used} (torch {torch.__version__}, CPU)"
