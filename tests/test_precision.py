"""The one table of precisions: names to dtypes, and the option annotation that lists the same names."""

from typing import get_args

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.precision import PRECISIONS, PrecisionName, precision_dtype


def test_names_map_to_their_dtypes():
    assert [precision_dtype(name) for name in ("fp32", "fp16", "bf16")] == [torch.float32, torch.float16, torch.bfloat16]


def test_option_annotation_lists_the_table_names():
    assert get_args(PrecisionName) == tuple(PRECISIONS)


def test_an_unknown_name_is_a_clear_error():
    with pytest.raises(TunelabError, match="unknown precision 'fp8'; choose from fp32, fp16, bf16"):
        precision_dtype("fp8")

