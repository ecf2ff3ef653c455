"""The LoRA tools tab: one small form per tool of `tunelab lora`, from its options dataclasses."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading
from pathlib import Path

import gradio as gr

from tunelab.config import resolve
from tunelab.errors import TunelabError
from tunelab.lora.tool_table import TOOLS
from tunelab.ui.forms import build_form, components, read_form
from tunelab.ui.paths import checked_paths
from tunelab.ui.train_tab import error_text
from tunelab.ui.workspace import Workspace

LORA_SUFFIXES = (".safetensors",)
_PRINTING = threading.Lock()  # the tools print their tables; one tool at a time owns stdout


def run_tool(workspace: Workspace, tool: str, values: dict) -> str:
    """Run `tunelab lora TOOL` in this process on checked values; Markdown with its output and file."""
    _, inputs, schema, function = TOOLS[tool]
    schemas = [inputs, schema] if inputs is not None else [schema]
    resolved = resolve(schemas, checked_paths(workspace, values))
    printed = io.StringIO()
    with _PRINTING, contextlib.redirect_stdout(printed):
        written = function(*resolved)
    text = f"`tunelab lora {tool}` done"
    if isinstance(written, (str, Path)):  # the tools that write a file return it (info returns its summary)
        text += f": wrote `{workspace.relative(written)}`"
    if printed.getvalue().strip():
        text += f"\n\n```\n{printed.getvalue().rstrip()}\n```"
    return text


def build(workspace: Workspace):
    lora_files = workspace.files(LORA_SUFFIXES)
    pickers = []
    for tool, (help_text, inputs, schema, _) in TOOLS.items():
        with gr.Tab(tool, elem_id=f"lora-{tool}-tab"):
            gr.Markdown(help_text)
            schemas = [inputs, schema] if inputs is not None else [schema]
            names = [field.name for one in schemas for field in dataclasses.fields(one)]
            file_fields = [name for name in names if name in ("file", "loras", "lora")]
            form = build_form(schemas, f"lora-{tool}", main=names, choices={name: lora_files for name in file_fields})
            pickers += [form[name].component for name in file_fields]
            button = gr.Button(f"Run {tool}", variant="primary", elem_id=f"lora-{tool}-run")
            result = gr.Markdown(elem_id=f"lora-{tool}-result")

            def run(received: dict, tool=tool, form=form) -> str:
                try:
                    return run_tool(workspace, tool, read_form(form, received))
                except TunelabError as error:
                    return error_text(error)

            button.click(run, inputs=components(form), outputs=result, api_name=f"lora_{tool.replace('-', '_')}")

    def refresh_files():
        found = workspace.files(LORA_SUFFIXES)
        return [gr.update(choices=found) for _ in pickers]

    return refresh_files, pickers
