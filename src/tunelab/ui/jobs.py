"""Long runs (training, comparisons) of one workspace: one at a time, the rest in a visible queue.

Jobs live in the server process, not in a browser tab: closing the page leaves a run going, and a page
opened later reads the same job's progress. Stopping the server asks the running training to stop
at its next step, which writes a checkpoint (as Ctrl-C does), and waits for it.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from tunelab.errors import TunelabError

FINISHED_STATES = ("finished", "stopped", "failed", "cancelled")


@dataclass
class Job:
    id: int
    kind: str  # "train" or "compare"
    title: str
    work: Callable[["Job"], Any] = field(repr=False)
    state: str = "queued"  # queued -> running -> finished | stopped | failed; queued -> cancelled
    step: int = 0
    total: int = 0
    loss: float | None = None
    seconds_left: float | None = None
    steps_per_second: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    experiments: list[str] = field(default_factory=list)  # a comparison's progress lines
    result: str | None = None  # the finished file or report
    error: str | None = None
    started: float | None = None
    stop_requested: bool = False

    def on_training_step(self, progress) -> None:
        """`on_progress` of tunelab.train: record the step, and pass a stop request on to the run."""
        now = time.perf_counter()
        self.step, self.total, self.loss, self.seconds_left = progress.step, progress.total, progress.loss, progress.seconds_left
        self.losses.append((progress.step, float(progress.loss)))
        self.samples += [str(path) for path in progress.samples]
        if self.started is not None and progress.step > 0:
            self.steps_per_second = progress.step / max(now - self.started, 1e-9)
        if self.stop_requested:
            progress.request_stop()

    def on_experiment(self, done: int, total: int, name: str) -> None:
        """`progress` of tunelab.compare: one line per experiment."""
        self.step, self.total = done, total
        self.experiments.append(f"{done}/{total} {name}")


class JobQueue:
    def __init__(self):
        self.jobs: list[Job] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closing = False
        self._worker = threading.Thread(target=self._serve, name="tunelab-ui-jobs", daemon=True)
        self._worker.start()

    def submit(self, kind: str, title: str, work: Callable[[Job], Any]) -> Job:
        with self._wake:
            if self._closing:
                raise TunelabError("the server is stopping; no new runs")
            job = Job(id=len(self.jobs) + 1, kind=kind, title=title, work=work)
            self.jobs.append(job)
            self._wake.notify()
        return job

    def stop(self, job_id: int | None = None) -> Job | None:
        """Stop a job (default: the running one): a queued job is cancelled, a running one stops at its next step."""
        with self._lock:
            candidates = [job for job in self.jobs if job.state in ("queued", "running")]
            if job_id is not None:
                candidates = [job for job in candidates if job.id == job_id]
            running = [job for job in candidates if job.state == "running"]
            job = running[0] if running else (candidates[0] if candidates else None)
            if job is None:
                return None
            if job.state == "queued":
                job.state = "cancelled"
            else:
                job.stop_requested = True
            return job

    def current(self) -> Job | None:
        """The running job, else the newest one (what the page shows when it opens)."""
        with self._lock:
            running = [job for job in self.jobs if job.state == "running"]
            return running[0] if running else (self.jobs[-1] if self.jobs else None)

    def latest(self, kind: str) -> Job | None:
        with self._lock:
            running = [job for job in self.jobs if job.kind == kind and job.state == "running"]
            of_kind = [job for job in self.jobs if job.kind == kind]
            return running[0] if running else (of_kind[-1] if of_kind else None)

    def waiting(self) -> list[Job]:
        with self._lock:
            return [job for job in self.jobs if job.state == "queued"]

    def shutdown(self, timeout: float = 600.0) -> None:
        """Cancel what waits, stop what runs and wait for it: a training stops at its next step and writes
        its checkpoint. A comparison cannot stop half-way, so it is left to end with the process (its
        finished experiments are kept, and the same comparison run again skips them)."""
        with self._wake:
            self._closing = True
            running = None
            for job in self.jobs:
                if job.state == "queued":
                    job.state = "cancelled"
                elif job.state == "running":
                    job.stop_requested, running = True, job
            self._wake.notify()
        if running is None or running.kind == "train":
            self._worker.join(timeout)

    def _next(self) -> Job | None:
        with self._wake:
            while True:
                queued = [job for job in self.jobs if job.state == "queued"]
                if queued:
                    queued[0].state = "running"
                    return queued[0]
                if self._closing:
                    return None
                self._wake.wait()

    def _serve(self) -> None:
        while (job := self._next()) is not None:
            job.started = time.perf_counter()
            try:
                job.result = job.work(job)
                job.state = "stopped" if job.stop_requested else "finished"
            except TunelabError as error:
                job.error, job.state = str(error), "failed"
            except Exception as error:  # a bug or a library failure: keep the server up, show it on the page
                job.error, job.state = f"{type(error).__name__}: {error}", "failed"
                traceback.print_exc()
