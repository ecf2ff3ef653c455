"""The Generate tab: tunelab.generate with the options of `tunelab generate`, a gallery, stored parameters."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from PIL import Image

from tunelab import api
from tunelab.errors import TunelabError
from tunelab.generation.png_info import read_options
from tunelab.generation.samplers import SAMPLERS
from tunelab.generation.session import GenerateOptions
from tunelab.ui.forms import build_form, components, read_form
from tunelab.ui.paths import MODEL_FIELDS, WEIGHTED_FIELDS, adapter_fields, checked_paths
from tunelab.ui.train_tab import error_text
from tunelab.ui.workspace import Workspace

ADAPTER_SUFFIXES = (".safetensors", ".pt", ".bin")
MAIN = ("model", "prompt", "negative_prompt", "sampler", "steps", "guidance", "seed", "width", "height", "count")


def _shown(workspace: Workspace, name: str, value):
    """A recorded option as the form shows it: workspace paths relative again."""
    if name in MODEL_FIELDS and isinstance(value, str):
        return workspace.relative(value)
    if name in WEIGHTED_FIELDS and isinstance(value, list):
        return [workspace.relative(item) for item in value]
    return value


def build(workspace: Workspace):
    adapters = adapter_fields()
    files = workspace.files(ADAPTER_SUFFIXES)
    form = build_form([GenerateOptions], "generate", skip={"out"}, main=(*MAIN, *adapters),
                      choices={"sampler": list(SAMPLERS), **{name: files for name in adapters}},
                      accordion="More options (grids, precision, device, from PNG)")
    with gr.Row():
        run = gr.Button("Generate", variant="primary", elem_id="generate-run")
        refresh = gr.Button("Refresh file lists", elem_id="generate-refresh")
    message = gr.Markdown(elem_id="generate-message")
    gallery = gr.Gallery(label="images", elem_id="generate-gallery", buttons=["download", "fullscreen"], columns=4, height=300)
    paths = gr.State([])
    selected = gr.State(None)
    parameters = gr.Textbox(label="stored parameters of the selected image", lines=3, elem_id="generate-parameters")
    send = gr.Button("Send to prompt", elem_id="generate-send")

    def generate(received: dict):
        try:
            values = checked_paths(workspace, read_form(form, received))
            out = workspace.new_folder("outputs")
            api.generate(out=str(out), **values)
        except TunelabError as error:
            return gr.skip(), gr.skip(), error_text(error)
        written = sorted(str(path) for path in out.glob("*.png"))
        return written, written, f"{len(written)} image(s) in `{workspace.relative(out)}`"

    run.click(generate, inputs=components(form), outputs=[gallery, paths, message], api_name="generate")

    def choose(shown: list[str], event: gr.SelectData):
        path = shown[event.index]
        return Image.open(path).info.get("parameters", ""), path

    gallery.select(choose, inputs=paths, outputs=[parameters, selected])

    controls = list(form.values())

    def send_to_prompt(path):
        if not path:
            return [gr.skip() for _ in controls]
        try:
            recorded = read_options(Path(path))
        except TunelabError:
            return [gr.skip() for _ in controls]
        updates = []
        for control in controls:
            if control.name not in recorded or recorded[control.name] is None:
                updates.append(gr.skip())
                continue
            value = _shown(workspace, control.name, recorded[control.name])
            if isinstance(control.component, gr.Textbox) and isinstance(value, list):
                value = "\n".join(map(str, value))
            updates.append(gr.update(value=value))
        return updates

    send.click(send_to_prompt, inputs=selected, outputs=[control.component for control in controls])

    def refresh_files():
        found = workspace.files(ADAPTER_SUFFIXES)
        return [gr.update(choices=found) for _ in adapters]

    refresh.click(refresh_files, outputs=[form[name].component for name in adapters])
    return refresh_files, [form[name].component for name in adapters]
