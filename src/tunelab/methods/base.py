"""The small protocol every technique implements; the trainer knows nothing else about it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch


class Method(Protocol):
    name: ClassVar[str]
    options_schema: ClassVar[type]  # dataclass of the technique's own options
    default_prompt: ClassVar[str | None]  # caption for uncaptioned images when --prompt is not given

    def __init__(self, options: Any) -> None: ...
    def setup(self, family) -> None: ...  # freeze the base, inject layers, add tokens
    def trainable_modules(self) -> dict[str, torch.nn.Module]: ...  # modules holding trainable weights
    def trainable_parameters(self) -> list[dict]: ...  # optimizer parameter groups
    def training_captions(self, captions: list[str]) -> list[str]: ...  # e.g. TI prompt templates
    def after_step(self, step: int) -> None: ...  # after each optimizer step: e.g. restore frozen rows, EMA
    def save(self, out_dir: Path, metadata: dict[str, str]) -> Path: ...  # the artifact, via formats/
