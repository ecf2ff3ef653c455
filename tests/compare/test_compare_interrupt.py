"""Ctrl-C during a comparison whose experiments run side by side: every running worker saves a checkpoint, no
other experiment starts, one line and exit 130; the same command then finishes from those checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

CONFIG = {"model": "toyworld", "subject": "checker", "images_per_prompt": 2, "sample_steps": 4, "metrics": ["subject_fidelity"],
          "experiments": [{"name": name, "technique": "lora", "steps": 100000, "rank": 2, "checkpoint_every": 5, "keep_last": 1}
                          for name in ("first", "second", "third")]}


def compare(config, out) -> subprocess.Popen:
    # A process group of its own, as a terminal's Ctrl-C reaches the command and its workers together.
    return subprocess.Popen([sys.executable, "-m", "tunelab.cli", "compare", str(config), "--out", str(out), "--parallel", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def checkpoints(out, name) -> list:
    return sorted((out / "experiments" / name / "checkpoints").glob("step-*"))


def test_ctrl_c_stops_the_running_experiments_with_checkpoints_and_starts_no_other(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "out"
    process = compare(config, out)
    deadline = time.time() + 300
    while not (checkpoints(out, "first") and checkpoints(out, "second")) and time.time() < deadline:
        time.sleep(0.5)  # the base is evaluated first, beside "first"; then "second" takes its slot
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "tunelab: stopped during the comparison; rerun the same command to go on"
    assert checkpoints(out, "first") and checkpoints(out, "second")
    assert not (out / "experiments" / "third").exists()  # never started
    assert json.loads((out / "experiments" / "base" / "result.json").read_text())["name"] == "base"


def test_a_worker_stopped_by_ctrl_c_starts_no_waiting_experiment_even_before_the_main_thread_hears(monkeypatch):
    """The pool frees the stopped worker's slot at once; the experiments waiting for it must not start (under load
    the main thread's KeyboardInterrupt can come later, and a worker started after the Ctrl-C never gets it)."""
    from tunelab.comparison import runner as runner_module
    from tunelab.training.stopping import TrainingInterrupted

    def fake_worker(spec, env):
        if spec["name"] == "first":
            raise TrainingInterrupted("stopped during experiment 'first'")

    monkeypatch.setattr(runner_module, "run_worker", fake_worker)
    started = []
    runner = runner_module.LocalRunner(parallel=1)
    with pytest.raises(TrainingInterrupted, match="stopped during the comparison; rerun the same command to go on"):
        runner.run([{"name": name} for name in ("first", "second", "third")], started=lambda spec: started.append(spec["name"]))
    assert started == ["first"]
