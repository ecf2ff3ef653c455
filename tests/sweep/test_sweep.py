"""`tunelab sweep` on toyworld at a tiny budget: the rank x alpha grid, its frontier report, a rerun that reuses
every finished trial, and two Ray workers giving the same trials' results as the local run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from helpers import run_cli
from tunelab import api
from tunelab.comparison import runner
from tunelab.errors import TunelabError
from tunelab.sweep import run as sweep_run
from tunelab.sweep.config import sweep_config_from
from tunelab.sweep.frontier import non_dominated, recommended

# One optimizer step per trial, one 2-step evaluation image, no base: the test is about the sweep, not the learning.
SHARED = {"model": "toyworld", "subject": "bullseye", "images_per_prompt": 1, "sample_steps": 2, "base": False,
          "metrics": ["subject_fidelity"], "technique": "lora", "training": {"steps": 1, "learning_rate": 5e-2}}
GRID = {**SHARED, "space": {"rank": [1, 4, 16], "alpha": ["rank/2", "rank"]}}
NAMES = ["lora-rank1-alpha0.5", "lora-rank1-alpha1", "lora-rank4-alpha2", "lora-rank4-alpha4",
         "lora-rank16-alpha8", "lora-rank16-alpha16"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "sweep.yaml").write_text(yaml.safe_dump(GRID, sort_keys=False))
    assert run_cli("sweep", folder / "sweep.yaml", "--out", folder / "out", "--parallel", "2") == 0
    return folder


def test_the_grid_runs_every_trial_and_the_report_shows_the_frontier(swept):
    data = json.loads((swept / "out" / "sweep.json").read_text())
    trials = data["trials"]
    assert [trial["name"] for trial in trials] == NAMES
    assert [(t["params"]["rank"], t["params"]["alpha"]) for t in trials] == [(1, 0.5), (1, 1.0), (4, 2.0), (4, 4.0), (16, 8.0), (16, 16.0)]
    sizes = [trial["artifact_bytes"] for trial in trials]
    # the file grows with rank, not alpha (same-rank files differ only by a few metadata bytes: alpha, folder names)
    assert max(sizes[0:2]) < min(sizes[2:4]) and max(sizes[2:4]) < min(sizes[4:6])
    assert all(abs(sizes[i] - sizes[i + 1]) < 0.01 * sizes[i] for i in (0, 2, 4))
    for name, key in (("size", "artifact_bytes"), ("cost", "usd")):
        front = set(data["frontier"][name])
        for trial in trials:  # on the frontier exactly when no other trial is as good and as small (cheap), one of them better
            beaten = any(o["subject_fidelity"] >= trial["subject_fidelity"] and o[key] <= trial[key]
                         and (o["subject_fidelity"] > trial["subject_fidelity"] or o[key] < trial[key]) for o in trials)
            assert (trial["name"] in front) == (not beaten), (name, trial)
    chosen = data["recommended"]
    best = max(trial["subject_fidelity"] for trial in trials)
    assert chosen["subject_fidelity"] >= best - 0.02
    assert chosen["artifact_bytes"] == min(t["artifact_bytes"] for t in trials if t["subject_fidelity"] >= best - 0.02)
    page = (swept / "out" / "report.html").read_text()
    assert page.count("<svg") == 2 and "Non-dominated trials" in page and f"Recommended: {chosen['name']}" in page
    assert all(name in page for name in data["frontier"]["size"])
    assert (swept / "out" / "experiments" / NAMES[0] / "lora.safetensors").is_file() and data["base"] is None


def test_a_rerun_reuses_every_finished_trial(swept, monkeypatch):
    results = sorted((swept / "out" / "experiments").glob("*/result.json"))
    assert len(results) == 6
    before = {path: path.stat().st_mtime_ns for path in results}
    monkeypatch.setattr(runner, "run_worker", lambda *a, **k: pytest.fail("a finished trial ran again"))
    api.sweep(swept / "sweep.yaml", out=swept / "out")
    assert {path: path.stat().st_mtime_ns for path in results} == before


def test_two_ray_workers_give_the_local_runs_results(swept, tmp_path):
    # Two trials at once, on a Ray instance of two workers this test starts (and stops).
    api.sweep({**GRID, "space": {"rank": [1, 4], "alpha": ["rank"]}}, out=tmp_path / "ray", ray="local", parallel=2)
    on_ray, local = ({t["name"]: t for t in json.loads((folder / "sweep.json").read_text())["trials"]}
                     for folder in (tmp_path / "ray", swept / "out"))
    assert list(on_ray) == ["lora-rank1-alpha1", "lora-rank4-alpha4"]
    for name, trial in on_ray.items():
        for key in ("subject_fidelity", "trainable_params", "params"):  # the file's size differs: its metadata names its folder
            assert trial[key] == local[name][key], (name, key)
        ray_weights = load_file(tmp_path / "ray" / "experiments" / name / "lora.safetensors")
        local_weights = load_file(swept / "out" / "experiments" / name / "lora.safetensors")
        assert ray_weights.keys() == local_weights.keys()
        assert all((ray_weights[key] == local_weights[key]).all() for key in ray_weights)


def test_frontier_and_recommendation_on_constructed_trials():
    trials = [{"name": n, "q": q, "artifact_bytes": b, "usd": c}
              for n, q, b, c in [("a", 0.50, 100, 3.0), ("b", 0.49, 50, 2.0), ("c", 0.40, 50, 1.0), ("d", 0.30, 80, 5.0)]]
    assert [t["name"] for t in non_dominated(trials, "q", True, "artifact_bytes")] == ["b", "a"]
    assert [t["name"] for t in non_dominated(trials, "q", True, "usd")] == ["c", "b", "a"]
    assert recommended(trials, "q", True, 0.02)["name"] == "b"  # within 0.02 of the best, and half the size
    assert recommended(trials, "q", True, 0.0)["name"] == "a"
    assert [t["name"] for t in non_dominated(trials, "q", False, "artifact_bytes")] == ["c", "d"]  # lower is better


@pytest.mark.parametrize(("change", "message"), [
    ({"space": {"rank": {"low": 1, "high": 16}}}, "a grid needs a list"),
    ({"space": {"rnak": [1, 4]}}, "did you mean 'rank'"),
    ({"space": {"rank": [1]}, "training": {"rank": 4}}, "both in 'training' and in 'space'"),
    ({"objective": "prompt_fidelity"}, "not among the metrics measured"),
    ({"search": {"optuna": {"trials": 0}}}, "trials: N"),
    ({"technique": "lorra"}, "did you mean 'lora'"),
])
def test_bad_sweep_configs_are_one_clear_error(change, message):
    with pytest.raises(TunelabError, match=message):
        sweep_config_from({**GRID, **change}, "sweep.yaml")


def test_an_optuna_search_asks_from_ranges_and_choices():
    config = sweep_config_from({**SHARED, "training": {"steps": 1},
                                "space": {"rank": [2, 8], "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
                                "search": {"optuna": {"trials": 3, "seed": 0}}}, "sweep.yaml")
    trial = sweep_run.optuna.create_study(sampler=sweep_run.optuna.samplers.RandomSampler(seed=0)).ask(
        {key: sweep_run.distribution(axis) for key, axis in config.axes.items()})
    experiment = config.trial(trial.params)
    assert experiment["rank"] in (2, 8) and 1e-4 <= experiment["learning_rate"] <= 1e-2
    assert experiment["name"].startswith(f"lora-rank{experiment['rank']}-learning_rate")


def test_an_optuna_search_tells_each_result_and_a_rerun_asks_the_same_trials(tmp_path, monkeypatch):
    # Workers replaced by a known landscape (fidelity peaks at rank 4), so the search itself is what runs.
    def landscape(spec, env=None):
        rank = spec["training"].get("rank", 0)
        record = {"name": spec["name"], "technique": spec["technique"], "fingerprint": spec["fingerprint"],
                  "train_seconds": 1.0 + rank, "artifact_bytes": 1000 * rank, "subject_fidelity": 1 - abs(rank - 4) / 8}
        Path(spec["result"]).parent.mkdir(parents=True, exist_ok=True)
        Path(spec["result"]).write_text(json.dumps(record))

    config = {**SHARED, "space": {"rank": [1, 2, 4, 8], "alpha": ["rank/2", "rank"]},
              "search": {"optuna": {"trials": 6, "seed": 3}}}
    monkeypatch.setattr(runner, "run_worker", landscape)
    api.sweep(config, out=tmp_path / "o", parallel=2)
    data = json.loads((tmp_path / "o" / "sweep.json").read_text())
    names = [trial["name"] for trial in data["trials"]]
    assert 1 <= len(names) <= 6 and len(set(names)) == len(names)  # a trial asked twice runs once
    assert data["recommended"]["subject_fidelity"] == max(t["subject_fidelity"] for t in data["trials"])
    monkeypatch.setattr(runner, "run_worker", lambda *a, **k: pytest.fail("a finished trial ran again"))
    api.sweep(config, out=tmp_path / "o", parallel=2)
    assert [t["name"] for t in json.loads((tmp_path / "o" / "sweep.json").read_text())["trials"]] == names
