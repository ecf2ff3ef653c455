"""The page: four tabs over one workspace and one job queue, refreshed by a timer so a reopened page
shows the runs that went on without it."""

from __future__ import annotations

import gradio as gr

from tunelab.ui import compare_tab, generate_tab, lora_tab, train_tab
from tunelab.ui.jobs import JobQueue
from tunelab.ui.workspace import Workspace

REFRESH_SECONDS = 1.0


def build_app(workspace: Workspace, jobs: JobQueue) -> gr.Blocks:
    with gr.Blocks(title="tunelab", analytics_enabled=False) as page:
        gr.Markdown(f"## tunelab\nWorkspace `{workspace.root}`: every path in these forms is relative to it.")
        with gr.Tabs():
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                show_training, training_outputs = train_tab.build(workspace, jobs)
            with gr.Tab("Generate", id="generate", elem_id="tab-generate") as generate_page:
                refresh_adapters, adapter_pickers = generate_tab.build(workspace)
            with gr.Tab("LoRA tools", id="lora-tools", elem_id="tab-lora-tools") as tools_page:
                refresh_loras, lora_pickers = lora_tab.build(workspace)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                show_comparison, comparison_outputs = compare_tab.build(workspace, jobs)
        seen_training, seen_comparison = gr.State(None), gr.State(None)
        # the file pickers list what the workspace holds when the tab is opened
        generate_page.select(refresh_adapters, outputs=adapter_pickers)
        tools_page.select(refresh_loras, outputs=lora_pickers)
        timer = gr.Timer(REFRESH_SECONDS)
        for event in (timer.tick, page.load):
            event(show_training, inputs=seen_training, outputs=[*training_outputs, seen_training], show_progress="hidden")
            event(show_comparison, inputs=seen_comparison, outputs=[*comparison_outputs, seen_comparison],
                  show_progress="hidden")
    return page
