"""Experiments side by side on this machine: one per GPU (each worker process sees only its GPU), or `parallel`
on the CPU, each worker on its share of the cores. The comparison bench and the sweep's local trials use it."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

import torch

from tunelab.errors import TunelabError
from tunelab.training.stopping import TrainingInterrupted

STOPPED = "stopped during the comparison; rerun the same command to go on"


def run_worker(spec: dict, env: dict[str, str] | None = None) -> None:
    """Train and evaluate one experiment in a process of its own (`env`: its environment, e.g. the GPU it may use)."""
    folder = Path(spec["out"])
    spec_path = folder / "spec.json"
    if spec_path.is_file() and json.loads(spec_path.read_text()) == spec:
        spec["training"]["resume"] = "latest"  # the same experiment stopped earlier: go on from its last checkpoint
    elif folder.exists():
        shutil.rmtree(folder)  # another experiment's leftovers under this name
    folder.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps({**spec, "training": {k: v for k, v in spec["training"].items() if k != "resume"}}, indent=2) + "\n")
    process = subprocess.Popen([sys.executable, "-m", "tunelab.comparison.worker", json.dumps(spec)], env=env)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        code = process.wait()  # the worker got the same Ctrl-C and is saving its checkpoint
    if code == 130:
        raise TrainingInterrupted(f"stopped during experiment {spec['name']!r}; rerun the same command to go on")
    if code != 0 or not Path(spec["result"]).is_file():
        raise TunelabError(f"experiment {spec['name']!r} failed (exit {code}); its output is in {folder}")


def check_parallel(parallel: int | None) -> None:
    if parallel is not None and parallel < 1:
        raise TunelabError(f"--parallel must be at least 1, got {parallel}")


def available_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    return len(os.sched_getaffinity(0))


class LocalRunner:
    def __init__(self, parallel: int | None):
        check_parallel(parallel)
        gpus = torch.cuda.device_count()
        self.width = parallel or max(1, gpus)
        # Workers side by side on the CPU split the cores between them: torch's default of one thread per core in
        # every worker oversubscribes the machine (spinning OpenMP threads made a worker 10x slower).
        threads = max(1, available_cores() // self.width)
        self.slots: queue.Queue = queue.Queue()
        for index in range(self.width):
            if gpus:
                self.slots.put({**os.environ, "CUDA_VISIBLE_DEVICES": str(index % gpus)})
            elif self.width > 1:
                self.slots.put({**os.environ, "OMP_NUM_THREADS": str(threads)})
            else:
                self.slots.put(None)
        # Set once a worker was stopped (Ctrl-C): the experiments still waiting for a slot then never start. Checked
        # by the pool's threads themselves, which free a slot before the main thread hears of the Ctrl-C.
        self.stopping = threading.Event()

    def _one(self, spec: dict, started: Callable[[dict], None]) -> None:
        env = self.slots.get()
        try:
            if self.stopping.is_set():
                return
            started(spec)
            run_worker(spec, env)
        except TrainingInterrupted:
            self.stopping.set()
            raise
        finally:
            self.slots.put(env)

    def run(self, specs: list[dict], started: Callable[[dict], None] = lambda spec: None) -> None:
        """Run every spec's worker, `width` at a time; `started(spec)` as each begins."""
        pool = ThreadPoolExecutor(self.width)
        futures = [pool.submit(self._one, spec, started) for spec in specs]
        try:
            wait(futures)
            pool.shutdown()
        except KeyboardInterrupt:
            # Ctrl-C reached the running workers too, and they are saving their checkpoints: start no other, let
            # them finish, then say how to go on.
            self.stopping.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise TrainingInterrupted(STOPPED) from None
        if self.stopping.is_set():  # the workers heard the Ctrl-C before this thread did
            raise TrainingInterrupted(STOPPED)
        for future in futures:
            future.result()  # the first failure, once every experiment has ended

    def close(self) -> None:
        pass
