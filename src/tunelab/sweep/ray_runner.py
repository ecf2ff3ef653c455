"""A sweep's trials on a Ray cluster (`tunelab sweep --ray ADDRESS`): one Ray task per trial, placed by Ray on
any node with a free GPU (or CPU, on a cluster without GPUs).

Each task runs the comparison's own worker process on its node, so a trial is measured as `tunelab compare`
measures it. Every node needs tunelab installed and the sweep's output folder at the same path (a shared
filesystem): the worker writes the trial's artifact and result.json there. ADDRESS `local` starts a Ray
instance on this machine for the sweep (`--parallel N` workers) and stops it at the end; any other address
is passed to `ray.init` (`auto`: the cluster this machine has joined).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import ray

from tunelab.comparison.run import device_name
from tunelab.comparison.runner import run_worker
from tunelab.errors import TunelabError


def run_trial(spec: dict) -> dict:
    """On a Ray worker: run one trial on this node's device; its record."""
    spec = {**spec, "device": device_name()}
    run_worker(spec)
    return json.loads(Path(spec["result"]).read_text())


class RayRunner:
    def __init__(self, address: str, parallel: int | None):
        self.started = not ray.is_initialized()
        if self.started and address == "local":
            # Ray starts workers at niceness 15; on a busy machine that starves the trials, which are the sweep's work.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(num_cpus=parallel or os.cpu_count(), include_dashboard=False, log_to_driver=False)
        elif self.started:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as error:
                raise TunelabError(f"--ray {address}: cannot connect to a Ray cluster ({error})") from None
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        self.needs = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        self.width = parallel or max(1, gpus or int(resources.get("CPU", 1)))
        self.task = ray.remote(max_retries=0)(run_trial).options(**self.needs)

    def run(self, specs: list[dict]) -> None:
        pending = {self.task.remote(spec): spec for spec in specs}
        failures = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(done[0])
            try:
                record = ray.get(done[0])
            except ray.exceptions.RayTaskError as error:
                failures.append(f"{spec['name']}: {error.cause if error.cause is not None else error}")
                continue
            result = Path(spec["result"])
            if not result.is_file():  # a node without the shared folder: keep the record here at least
                result.parent.mkdir(parents=True, exist_ok=True)
                result.write_text(json.dumps(record, indent=2) + "\n")
        if failures:
            raise TunelabError(f"{len(failures)} trial(s) failed on Ray; first: {failures[0]}")

    def close(self) -> None:
        if self.started:
            ray.shutdown()
