"""The job queue: one run at a time, the rest waiting in order; stop and shutdown reach the run."""

from __future__ import annotations

import threading
import time

from tunelab.errors import TunelabError
from tunelab.ui.jobs import JobQueue


class FakeProgress:
    def __init__(self, step):
        self.step, self.total, self.loss, self.seconds_left, self.samples = step, 100, 0.5, 1.0, []
        self.stopped = False

    def request_stop(self):
        self.stopped = True


def wait_for(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_runs_one_at_a_time_in_order_and_a_stop_reaches_the_running_training():
    queue = JobQueue()
    release = threading.Event()
    order, stops = [], []

    def training(job):
        order.append(job.id)
        step = 0
        while True:
            step += 1
            progress = FakeProgress(step)
            job.on_training_step(progress)
            if progress.stopped:
                stops.append(step)
                return "checkpoint"
            release.wait(0.01)

    first = queue.submit("train", "first", training)
    second = queue.submit("train", "second", lambda job: order.append(job.id) or "done")
    wait_for(lambda: first.step > 2)
    assert second.state == "queued" and queue.waiting() == [second]
    assert queue.current() is first and first.losses[:2] == [(1, 0.5), (2, 0.5)]
    queue.stop()
    wait_for(lambda: second.state == "finished")
    assert first.state == "stopped" and first.result == "checkpoint" and stops == [first.step]
    assert order == [first.id, second.id]
    queue.shutdown()


def test_failures_show_their_one_line_and_shutdown_cancels_what_waits():
    queue = JobQueue()
    started = threading.Event()

    def refused(job):
        raise TunelabError("--rank must be at least 1")

    def slow(job):
        started.set()
        while not job.stop_requested:
            time.sleep(0.01)
        return None

    failing = queue.submit("train", "refused", refused)
    running = queue.submit("train", "slow", slow)
    waiting = queue.submit("compare", "later", lambda job: "never")
    started.wait(10)
    queue.shutdown(10)
    assert failing.state == "failed" and failing.error == "--rank must be at least 1"
    assert running.state == "stopped" and waiting.state == "cancelled"


def test_shutdown_does_not_wait_for_a_comparison():
    queue = JobQueue()
    release, started = threading.Event(), threading.Event()
    comparison = queue.submit("compare", "demo", lambda job: started.set() or release.wait(30))
    started.wait(10)
    began = time.monotonic()
    queue.shutdown(timeout=20)
    assert time.monotonic() - began < 5 and comparison.state == "running" and comparison.stop_requested
    release.set()
