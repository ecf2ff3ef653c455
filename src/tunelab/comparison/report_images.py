"""Sample grids for the report: each technique's images under what they should look like, one column per seed.

Rows come in groups, one per evaluation prompt set: the subject rendered as each prompt asks (the
reference) over the technique's images for the same prompts and seeds; for the class prompt, the
untuned base's images over the technique's, so prior drift shows as pictures. A subject with no
renderer (a folder of images) has no references: its grid is the technique's rows only.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tunelab.evaluate.protocol import Evaluation

CELL = 96  # about this many pixels per image: 32 px images grow 3x, 64 px 2x, nearest neighbour keeps hard edges
GAP = 2
GROUP_GAP = 10  # between row groups, so a reference and its technique's row read as one pair
LABEL_PAD = 6
TEXT = (40, 40, 40)
FAINT = (110, 110, 110)
GROUP_TITLES = {"subject": "subject prompt", "prompts": "asked background / place", "class": "class prompt"}
GRID_SEEDS = 8  # columns shown; an evaluation may use many more seeds for precise scores


@dataclass
class GridRow:
    group: str  # the prompt set the row's images answer: rows of one group sit together
    label: str  # whose images: "reference", "base", or the experiment's name
    images: list[np.ndarray]  # (H, W, 3) uint8 each, one per seed


def comparison_rows(name: str, own: Evaluation, base: Evaluation | None) -> list[GridRow]:
    """An experiment's rows with what to hold them against: renders of the subject, and the base's class images."""
    rows = []
    for group, (_, images) in own.rows.items():
        if group in own.references:
            rows.append(GridRow(group, "reference", own.references[group][:GRID_SEEDS]))
        elif group == "class" and base is not None and base is not own and "class" in base.rows and base.seeds == own.seeds:
            rows.append(GridRow(group, "base", base.rows["class"][1][:GRID_SEEDS]))
        rows.append(GridRow(group, name, images[:GRID_SEEDS]))
    return rows


def scale_for(side: int) -> int:
    """Whole-number upscaling to about CELL pixels (1 for images already that large)."""
    return max(1, round(CELL / side))


def _cell_side(image: np.ndarray) -> int:
    side = image.shape[0]
    return side * scale_for(side) if side < CELL else min(side, 2 * CELL)  # big images shrink to keep the page light


def _fit(image: np.ndarray, cell: int) -> np.ndarray:
    if cell % image.shape[0] == 0:
        factor = cell // image.shape[0]
        return image.repeat(factor, axis=0).repeat(factor, axis=1)  # (cell, cell, 3)
    return np.asarray(Image.fromarray(image).resize((cell, cell), Image.LANCZOS))


@dataclass
class GridLayout:
    rows: list[GridRow]
    label_width: int
    cell: int  # image side in the grid, pixels

    def cell_origin(self, row: int, column: int) -> tuple[int, int]:
        """(y, x) of the top-left pixel of an image in the grid."""
        y = row * (self.cell + GAP) + GROUP_GAP * self.groups_before(row)
        return y, self.label_width + column * (self.cell + GAP)

    def groups_before(self, row: int) -> int:
        return sum(1 for index in range(1, row + 1) if self.rows[index].group != self.rows[index - 1].group)

    @property
    def size(self) -> tuple[int, int]:
        columns = max(len(row.images) for row in self.rows)
        bottom, _ = self.cell_origin(len(self.rows) - 1, 0)
        return bottom + self.cell, self.label_width + columns * (self.cell + GAP) - GAP


def layout(rows: list[GridRow]) -> GridLayout:
    font = ImageFont.load_default()
    texts = [row.label for row in rows] + [GROUP_TITLES.get(row.group, row.group) for row in rows]
    widest = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font) for text in texts)
    return GridLayout(rows, int(widest) + 2 * LABEL_PAD, _cell_side(rows[0].images[0]))


def save_grid(rows: list[GridRow], path: Path) -> Path:
    """One PNG: a label column (the row's prompt set, and whose images), then the images, one column per seed."""
    grid = layout(rows)
    height, width = grid.size
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for index, row in enumerate(rows):
        for column, image in enumerate(row.images):
            y, x = grid.cell_origin(index, column)
            canvas[y : y + grid.cell, x : x + grid.cell] = _fit(image, grid.cell)
    picture = Image.fromarray(canvas)
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default()
    for index, row in enumerate(rows):
        y, _ = grid.cell_origin(index, 0)
        if index == 0 or rows[index - 1].group != row.group:
            draw.text((LABEL_PAD, y + 2), GROUP_TITLES.get(row.group, row.group), fill=FAINT, font=font)
        draw.text((LABEL_PAD, y + grid.cell // 2 - 5), row.label, fill=TEXT, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def write_sample_grids(records: list[dict]) -> None:
    """Each record's samples.png from the images its evaluation kept, beside those of the base on its subject (the
    record its `base` names; records[0] for records that name none); records made before evaluations kept their
    images keep the grid they have."""
    loaded: dict[str, Evaluation] = {}

    def evaluation(path: str | None) -> Evaluation | None:
        if not path or not Path(path).is_file():
            return None
        if path not in loaded:
            loaded[path] = Evaluation.load_images(Path(path))
        return loaded[path]

    by_name = {record["name"]: record for record in records}
    for record in records:
        own = evaluation(record.get("evaluation_images"))
        if own is None:
            continue
        base = evaluation(by_name.get(record.get("base"), records[0]).get("evaluation_images"))
        rows = comparison_rows(record["name"], own, base)
        record["samples"] = str(save_grid(rows, Path(record["evaluation_images"]).with_name("samples.png")))
        record["sample_rows"] = [f"{GROUP_TITLES.get(row.group, row.group)}: {row.label}" for row in rows]
        record["sample_seeds"] = own.seeds[:GRID_SEEDS]


def inline_png(path: str, alt: str) -> str:
    """An <img> holding the PNG itself (the report is one self-contained file), drawn without smoothing."""
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}" style="image-rendering: pixelated">'
