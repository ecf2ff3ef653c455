"""The Compare tab: `tunelab demo` or a compare config as a queued job, and its report in the page."""

from __future__ import annotations

import html
import urllib.parse

import gradio as gr

from tunelab import api
from tunelab.comparison.runner import check_parallel
from tunelab.errors import TunelabError
from tunelab.toyworld.subjects import SUBJECTS
from tunelab.ui.jobs import Job, JobQueue
from tunelab.ui.paths import checked_paths
from tunelab.ui.train_tab import error_text, run_line
from tunelab.ui.workspace import Workspace


def compare_work(workspace: Workspace, values: dict, subject: str, scale: float, with_hyper: bool = False,
                 parallel: int | None = None):
    """The queued job: a compare config, or the demo (`with_hyper`: with the predicted LoRA's rows); `parallel`
    experiments at once (None: the command's default)."""
    def work(job: Job) -> str:
        if "config" in values:
            report = api.compare(values["config"], out=values["out"], progress=job.on_experiment, parallel=parallel)
        else:
            report = api.demo(out=values["out"], subject=subject, scale=scale, progress=job.on_experiment,
                              with_hyper=with_hyper, parallel=parallel)
        return workspace.relative(report)

    return work


def report_frame(workspace: Workspace, job: Job | None) -> str:
    """The finished report inside the page, served from the workspace by Gradio's file route."""
    if job is None or job.state != "finished" or not job.result:
        return ""
    source = "/gradio_api/file=" + urllib.parse.quote(str(workspace.root / job.result))
    return f'<iframe src="{html.escape(source)}" style="width:100%;height:900px;border:0" title="report"></iframe>'


def build(workspace: Workspace, jobs: JobQueue):
    kind = gr.Radio(["demo", "config file"], value="demo", label="what to run", elem_id="compare-kind")
    with gr.Row():
        subject = gr.Dropdown(list(SUBJECTS), value="bullseye", label="demo subject (toyworld)", elem_id="compare-subject")
        scale = gr.Number(value=1.0, label="demo scale (steps x scale)", elem_id="compare-scale")
        with_hyper = gr.Checkbox(value=False, label="demo: add the weight predictor's LoRA (--with-hyper)", elem_id="compare-with-hyper")
        parallel = gr.Number(value=0, precision=0, label="experiments at once, --parallel (0: the default, one per core on the CPU for the demo)",
                             elem_id="compare-parallel")
    config = gr.Textbox(label="compare config (YAML/TOML in the workspace; docs/compare.md)", elem_id="compare-config")
    out = gr.Textbox(value="comparisons/demo", label="--out (folder in the workspace)", elem_id="compare-out")
    with gr.Row():
        start = gr.Button("Start", variant="primary", elem_id="compare-start")
        stop = gr.Button("Cancel if queued", elem_id="compare-stop")
    message = gr.Markdown(elem_id="compare-message")
    status = gr.Markdown(elem_id="compare-status")
    report = gr.HTML(elem_id="compare-report")

    def submit(chosen, subject_name, scale_value, hyper, at_once, config_path, out_path):
        try:
            values = {"out": out_path}
            if chosen == "config file":
                values["config"] = config_path
            values = checked_paths(workspace, values)
            title = f"compare {config_path}" if "config" in values else f"demo {subject_name}"
            parallel_value = int(at_once or 0) or None
            check_parallel(parallel_value)
            job = jobs.submit("compare", title, compare_work(workspace, values, subject_name, float(scale_value or 1.0),
                                                             bool(hyper), parallel_value))
        except TunelabError as error:
            return error_text(error)
        return f"run {job.id} queued"

    start.click(submit, inputs=[kind, subject, scale, with_hyper, parallel, config, out], outputs=message, api_name="compare_start")

    def cancel():
        job = jobs.latest("compare")
        if job is None or job.state != "queued":
            return "no comparison is waiting (a running comparison finishes its experiments)"
        jobs.stop(job.id)
        return f"run {job.id} cancelled"

    stop.click(cancel, outputs=message)

    def show(seen):
        job = jobs.latest("compare")
        key = (job.id, job.state, job.step, len(jobs.waiting())) if job else None
        if key == seen:
            return gr.skip(), gr.skip(), seen
        return run_line(job, jobs), report_frame(workspace, job), key

    return show, [status, report]
