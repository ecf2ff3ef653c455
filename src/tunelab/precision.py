"""The one table of precisions: the names options and files use (fp32, fp16, bf16) and their torch dtypes.

It sits at the bottom, beside errors.py, because every layer names precisions: the single-file
reader and writer, the LoRA tools, training's mixed precision and generation's inference dtype.
"""

from __future__ import annotations

from typing import Literal

import torch

from tunelab.errors import TunelabError

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# For option annotations; tests/test_precision.py holds it equal to PRECISIONS' names.
PrecisionName = Literal["fp32", "fp16", "bf16"]


def precision_dtype(name: str) -> torch.dtype:
    """The torch dtype of a precision name ("bf16" -> torch.bfloat16)."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise TunelabError(f"unknown precision {name!r}; choose from {', '.join(PRECISIONS)}") from None

