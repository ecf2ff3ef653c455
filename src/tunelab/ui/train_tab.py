"""The Train tab: a technique, its options from the registry's dataclasses, and the live run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gradio as gr
import pandas as pd

from tunelab import api
from tunelab.errors import TunelabError
from tunelab.methods import METHODS, method_class
from tunelab.training.prepare import run_schemas
from tunelab.ui.forms import build_form, components, flag_refusal, read_form
from tunelab.ui.jobs import Job, JobQueue
from tunelab.ui.paths import checked_paths
from tunelab.ui.workspace import Workspace

MAIN = ("model", "images", "out", "prompt", "class_prompt", "steps", "learning_rate", "sample_every", "checkpoint_every")


def error_text(error: Exception) -> str:
    return f"**Refused:** {error}"


def run_line(job: Job | None, queue: JobQueue) -> str:
    """One Markdown block: what runs, how far it is, and what waits."""
    if job is None:
        text = "No run yet in this workspace."
    else:
        text = f"**run {job.id}** ({job.title}): {job.state}"
        if job.total:
            text += f", step {job.step}/{job.total}"
        if job.loss is not None:
            text += f", loss {job.loss:.4f}"
        if job.steps_per_second and job.state == "running":
            text += f", {job.steps_per_second:.2f} steps/s"
        if job.seconds_left is not None and job.state == "running":
            text += f", {job.seconds_left:.0f} s left"
        if job.experiments:
            text += "\n\n" + "\n".join(f"- {line}" for line in job.experiments)
        if job.result:
            text += f"\n\n{'finished' if job.state == 'finished' else 'last checkpoint'}: `{job.result}`"
        if job.error:
            text += f"\n\n**failed:** {job.error}"
    waiting = queue.waiting()
    if waiting:
        text += "\n\nwaiting: " + ", ".join(f"run {job.id} ({job.title})" for job in waiting)
    return text


def train_work(workspace: Workspace, technique: str, options: dict):
    def work(job: Job) -> str | None:
        result = api.train(technique, on_progress=job.on_training_step, **options)
        finished = result.artifact if result.artifact is not None else result.checkpoint
        return workspace.relative(finished) if finished is not None else None

    return work


def build(workspace: Workspace, jobs: JobQueue):
    names = list(METHODS)
    schemas = run_schemas(names[0])
    technique = gr.Dropdown(choices=[(method_class(name).title, name) for name in names], value=names[0],
                            label="technique", elem_id="train-technique")
    with gr.Row():
        upload = gr.File(file_count="multiple", label="upload images (and .txt captions) into the workspace",
                         elem_id="train-upload", height=120)
        config_upload = gr.File(file_types=[".yaml", ".yml", ".toml"], label="load a config file (YAML/TOML)",
                                elem_id="train-config-upload", height=120)
    config = gr.Textbox(label="--config", info="config file in the workspace; the form's values win", elem_id="train-config")
    trainer = build_form([schemas[0], *schemas[2:]], "train", main=MAIN, accordion="All trainer options")
    own = {}
    for name in names:
        with gr.Group(visible=name == names[0]) as group:
            gr.Markdown(f"**{method_class(name).title} options**")
            own[name] = (group, build_form([method_class(name).options_schema], f"train-{name}",
                                           main=[field.name for field in dataclasses.fields(method_class(name).options_schema)], accordion="more"))
    with gr.Row():
        start = gr.Button("Start", variant="primary", elem_id="train-start")
        resume = gr.Button("Resume (latest checkpoint)", elem_id="train-resume")
        stop = gr.Button("Stop (saves a checkpoint)", variant="stop", elem_id="train-stop")
    message = gr.Markdown(elem_id="train-message")
    status = gr.Markdown(elem_id="train-status")
    loss = gr.LinePlot(x="step", y="loss", label="loss", elem_id="train-loss")
    samples = gr.Gallery(label="samples", elem_id="train-samples", buttons=["download", "fullscreen"], columns=4, height=220)
    resolved = gr.File(label="resolved config", elem_id="train-resolved")

    technique.change(lambda chosen: [gr.update(visible=name == chosen) for name in names],
                     inputs=technique, outputs=[group for group, _ in own.values()])

    def take_images(files):
        if not files:
            return gr.skip(), ""
        try:
            folder = workspace.take_uploads(files, "uploads")
        except TunelabError as error:
            return gr.skip(), error_text(error)
        return workspace.relative(folder), f"uploaded {len(files)} file(s) to `{workspace.relative(folder)}`"

    upload.upload(take_images, inputs=upload, outputs=[trainer["images"].component, message])

    def take_config(file):
        if not file:
            return gr.skip(), ""
        try:
            folder = workspace.take_uploads([file], "configs")
        except TunelabError as error:
            return gr.skip(), error_text(error)
        return workspace.relative(folder / Path(file).name), "config file saved to the workspace"

    config_upload.upload(take_config, inputs=config_upload, outputs=[config, message])

    def submit(received: dict, resume_latest: bool) -> list:
        """Queue the run; a refusal shows under the form and under the field it names (as the CLI words it)."""
        chosen = received[technique]
        error = None
        try:
            values = {**read_form(trainer, received), **read_form(own[chosen][1], received)}
            if received[config]:
                values["config"] = received[config]
            if resume_latest:
                values["resume"] = "latest"
            values = checked_paths(workspace, values)
            api.check_train(chosen, **values)  # a refused option shows now, not after the queue
            job = jobs.submit("train", f"{chosen} -> {workspace.relative(values.get('out', '?'))}",
                              train_work(workspace, chosen, values))
        except TunelabError as refused:
            error = str(refused)
        flags = flag_refusal({**trainer, **own[chosen][1]}, error)
        updates = [error_text(error) if error else f"run {job.id} queued", *flags[:len(trainer)]]
        for name in names:  # in the order of `outputs`
            updates += flags[len(trainer):] if name == chosen else [gr.skip() for _ in own[name][1]]
        return updates

    inputs = components(trainer, *(form for _, form in own.values())) | {technique, config}
    outputs = [message, *(control.component for control in trainer.values())]
    outputs += [control.component for name in names for control in own[name][1].values()]
    start.click(lambda received: submit(received, False), inputs=inputs, outputs=outputs, api_name="train_start")
    resume.click(lambda received: submit(received, True), inputs=inputs, outputs=outputs, api_name="train_resume")

    def stop_run():
        job = jobs.stop()
        return f"stopping run {job.id} at its next step" if job else "nothing is running"

    stop.click(stop_run, outputs=message, api_name="train_stop")

    def show(seen):
        """The newest training run (a page opened later sees the same one); unchanged output is skipped."""
        job = jobs.latest("train")
        key = (job.id, job.state, job.step, len(job.samples), len(jobs.waiting())) if job else None
        if key == seen:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen
        curve = pd.DataFrame(job.losses if job else [], columns=["step", "loss"])
        config_file = None
        if job and job.result:
            out = workspace.root / job.result
            candidate = (out if out.is_dir() else out.parent) / "config.yaml"
            config_file = str(candidate) if candidate.is_file() else None
        return run_line(job, jobs), curve, list(job.samples) if job else [], config_file, key

    return show, [status, loss, samples, resolved]
