"""Sample grids for the report: one row per evaluation prompt set, one column per seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SCALE = 3  # toyworld images are 32 px; nearest-neighbour upscaling keeps their hard edges visible
GAP = 2


def save_grid(rows: dict[str, tuple[list[str], list[np.ndarray]]], path: Path) -> Path:
    """rows: name -> (prompts, images); written as one PNG, rows in the dict's order."""
    image_rows = [images for _, images in rows.values()]
    height, width = image_rows[0][0].shape[:2]
    columns = max(len(images) for images in image_rows)
    cell_h, cell_w = height * SCALE + GAP, width * SCALE + GAP
    canvas = np.full((len(image_rows) * cell_h, columns * cell_w, 3), 255, dtype=np.uint8)
    for row, images in enumerate(image_rows):
        for column, image in enumerate(images):
            big = image.repeat(SCALE, axis=0).repeat(SCALE, axis=1)  # (H*S, W*S, 3)
            canvas[row * cell_h : row * cell_h + big.shape[0], column * cell_w : column * cell_w + big.shape[1]] = big
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path
