"""Fixtures for the LoRA tools: a tiny-sd folder and a copy of it with known low-rank weight changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_tool_helpers import add_low_rank_changes
from tunelab.models.presets import build_preset

CHANGE_RANK = 2


@pytest.fixture(scope="session")
def low_rank_tuned(tmp_path_factory) -> tuple[Path, dict]:
    """tiny-sd with a rank-2 change to every Linear and Conv2d of UNet and text encoder, saved; and those changes."""
    pipeline = build_preset("tiny-sd")
    changes = add_low_rank_changes(pipeline, CHANGE_RANK)
    folder = tmp_path_factory.mktemp("tiny-sd-tuned")
    pipeline.save_pretrained(folder)
    return folder, changes
