"""The small protocol every technique implements; the trainer knows nothing else about it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch


class Method(Protocol):
    name: ClassVar[str]
    options_schema: ClassVar[type]  # dataclass of the technique's own options

    def __init__(self, options: Any) -> None: ...
    def setup(self, family) -> None: ...  # freeze the base, inject layers, add tokens
    def trainable_modules(self) -> dict[str, torch.nn.Module]: ...  # modules holding trainable weights
    def trainable_parameters(self) -> list[dict]: ...  # optimizer parameter groups
    def after_step(self) -> None: ...  # e.g. restore frozen embedding rows
    def save(self, out_dir: Path, metadata: dict[str, str]) -> Path: ...  # the artifact, via formats/
