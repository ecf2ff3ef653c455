"""The small protocol every technique implements; the trainer knows nothing else about it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch


class Method(Protocol):
    name: ClassVar[str]
    options_schema: ClassVar[type]  # dataclass of the technique's own options
    default_learning_rate: ClassVar[float]  # used when --learning-rate is not given
    default_prompt: ClassVar[str | None]  # caption for uncaptioned images when --prompt is not given

    def __init__(self, options: Any) -> None: ...
    def setup(self, family) -> None: ...  # freeze the base, inject layers, add tokens
    def trainable_modules(self) -> dict[str, torch.nn.Module]: ...  # modules holding trainable weights
    def trainable_parameters(self) -> list[dict]: ...  # optimizer parameter groups
    def learned_parameter_count(self) -> int: ...  # what the technique learns (TI: its new rows, not the whole table)
    def training_captions(self, captions: list[str]) -> list[str]: ...  # e.g. TI prompt templates
    def after_step(self, step: int) -> None: ...  # after each optimizer step: e.g. restore frozen rows, EMA
    def save(self, out_dir: Path, metadata: dict[str, str]) -> Path: ...  # the artifact, via formats/


def parameter_groups(modules: dict[str, torch.nn.Module], text_encoder_names, text_encoder_lr: float | None) -> list[dict]:
    """One optimizer group per trained component; text encoders may have their own learning rate."""
    groups = []
    for name, module in modules.items():
        group = {"params": [p for p in module.parameters() if p.requires_grad], "name": name}
        if name in text_encoder_names and text_encoder_lr is not None:
            group["lr"] = text_encoder_lr
        groups.append(group)
    return groups


def group_parameter_count(groups: list[dict]) -> int:
    """Elements of the trainable parameters in optimizer groups."""
    return sum(p.numel() for group in groups for p in group["params"] if p.requires_grad)
