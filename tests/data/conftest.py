"""Helpers that draw small test images on disk; nothing binary is committed."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def save_solid(path: Path, size=(40, 30), color=(200, 50, 50), mode="RGB", **save_args) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save_args)
    return path


def save_noise(path: Path, size=(64, 64), seed=0, **save_args) -> Path:
    """Random pixels compress badly, so cutting the file surely cuts image data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **save_args)
    return path


@pytest.fixture
def solid():
    return save_solid


@pytest.fixture
def noise():
    return save_noise
