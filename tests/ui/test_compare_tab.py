"""The Compare tab's job passes the demo's and the comparison's options on to the api."""

from __future__ import annotations

from tunelab import api
from tunelab.ui.compare_tab import compare_work
from tunelab.ui.jobs import Job
from tunelab.ui.workspace import Workspace


def test_the_demo_job_passes_with_hyper_and_parallel_and_a_config_job_passes_parallel(tmp_path, monkeypatch):
    calls = []

    def fake(name):
        def run(*args, **kwargs):
            calls.append((name, args, kwargs))
            return tmp_path / "out" / "report.html"
        return run

    monkeypatch.setattr(api, "demo", fake("demo"))
    monkeypatch.setattr(api, "compare", fake("compare"))
    workspace = Workspace(tmp_path)
    values = {"out": tmp_path / "out"}
    job = Job(1, "compare", "demo", work=lambda job: None)

    assert compare_work(workspace, values, "flag", 0.5, with_hyper=True, parallel=2)(job) == "out/report.html"
    name, _, kwargs = calls[-1]
    assert name == "demo" and (kwargs["subject"], kwargs["scale"], kwargs["with_hyper"], kwargs["parallel"]) == ("flag", 0.5, True, 2)

    compare_work(workspace, {**values, "config": tmp_path / "c.yaml"}, "bullseye", 1.0, parallel=None)(job)
    name, args, kwargs = calls[-1]
    assert name == "compare" and args == (tmp_path / "c.yaml",) and kwargs["parallel"] is None
