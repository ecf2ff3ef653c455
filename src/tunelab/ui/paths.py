"""Which option fields name files, and their check against the workspace before any library sees them."""

from __future__ import annotations

from typing import Any

from tunelab.methods import METHODS, method_class
from tunelab.ui.workspace import Workspace

MODEL_FIELDS = {"model", "base", "tuned"}  # a preset, a model in the workspace or under --model-dir
INPUT_FIELDS = {"images", "class_images", "validation_images", "masks", "file", "from_png", "adapters_dir", "config"}  # must exist in the workspace
OUTPUT_FIELDS = {"out", "class_cache"}  # written inside the workspace
# FILE[:WEIGHT] / FILE[:TOKEN] lists: each technique's generation flag, and the LoRA tools' inputs
WEIGHTED_FIELDS = {flag.field for flag in (method_class(name).generate_flag for name in METHODS) if flag} | {"loras"}


def adapter_fields() -> list[str]:
    """The generate options that attach a trained file, in registry order."""
    return [flag.field for flag in (method_class(name).generate_flag for name in METHODS) if flag]


def checked_paths(workspace: Workspace, values: dict[str, Any]) -> dict[str, Any]:
    """`values` with every path field replaced by its real path; a TunelabError for one outside the workspace."""
    checked = dict(values)
    for name, value in values.items():
        if name in MODEL_FIELDS:
            checked[name] = workspace.model(value, name)
        elif name in INPUT_FIELDS:
            checked[name] = str(workspace.path(value, name, must_exist=True))
        elif name in OUTPUT_FIELDS:
            checked[name] = str(workspace.path(value, name))
        elif name == "resume" and value != "latest":
            checked[name] = str(workspace.path(value, name, must_exist=True))
        elif name in WEIGHTED_FIELDS:
            items = [value] if isinstance(value, str) else value
            checked[name] = [workspace.weighted(item, name) for item in items]
    return checked
