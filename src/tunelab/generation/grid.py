"""X/Y grids: one or two options swept over values; every cell saved, plus one labelled grid PNG.

The pipeline and its adapters load once; per cell only the sampler, the LoRA weights, the prompt
encoding (a text-encoder LoRA changes it) and the call's own arguments change, so each cell is the
image `tunelab generate` gives for those options alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from tunelab.errors import TunelabError
from tunelab.generation.png_info import save_png
from tunelab.generation.session import apply_image_options, image_record, prepare, render, text_inputs
from tunelab.methods import generation_methods

SAMPLING_PARAMETERS = {"seed": int, "steps": int, "guidance": float, "sampler": str}
PAD = 4  # pixels around each label


@dataclass
class Axis:
    parameter: str
    values: list

    def label(self, value) -> str:
        return f"{self.parameter}={value}"


def grid_parameters() -> dict[str, type]:
    """What a grid may sweep: the sampling options, and the techniques' own per-image options (a LoRA's weight)."""
    parameters = dict(SAMPLING_PARAMETERS)
    for method in generation_methods():
        parameters |= method.grid_parameters()
    return parameters


def parse_axis(spec: str, flag: str) -> Axis:
    """'steps=10,20' -> Axis('steps', [10, 20])."""
    parameters = grid_parameters()
    parameter, separator, values_text = spec.partition("=")
    parameter = parameter.strip().replace("-", "_")
    if not separator or parameter not in parameters:
        raise TunelabError(f"{flag} {spec!r}: expected PARAM=v1,v2,... with PARAM one of {', '.join(parameters)}")
    kind = parameters[parameter]
    values = []
    for text in values_text.split(","):
        try:
            values.append(kind(text.strip()))
        except ValueError:
            raise TunelabError(f"{flag} {parameter}: {text.strip()!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not values or values == [""]:
        raise TunelabError(f"{flag} {parameter}: no values")
    return Axis(parameter, values)


@dataclass
class Layout:
    size: tuple[int, int]  # (width, height) of the whole grid
    cell_origins: list[list[tuple[int, int]]]  # [row][column] -> top-left corner of that cell's image
    column_label_origins: list[tuple[int, int]]
    row_label_origins: list[tuple[int, int]]


def grid_layout(cell_size: tuple[int, int], column_labels: list[str], row_labels: list[str], font) -> Layout:
    """Columns as wide as their widest label or the image; row labels in a left margin."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    width, height = cell_size
    label_height = max(text_size(label)[1] for label in column_labels + row_labels)
    column_width = max([width] + [text_size(label)[0] + 2 * PAD for label in column_labels])
    left = max([0] + [text_size(label)[0] + 2 * PAD for label in row_labels if label])
    top = label_height + 2 * PAD
    row_height = height + (PAD if any(row_labels) else 0)
    cell_origins = [
        [(left + column * column_width + (column_width - width) // 2, top + row * row_height) for column in range(len(column_labels))]
        for row in range(len(row_labels))
    ]
    return Layout(
        size=(left + column_width * len(column_labels), top + row_height * len(row_labels)),
        cell_origins=cell_origins,
        column_label_origins=[(left + column * column_width + PAD, PAD) for column in range(len(column_labels))],
        row_label_origins=[(PAD, top + row * row_height + (height - label_height) // 2) for row in range(len(row_labels))],
    )


def draw_grid(cells: list[list], column_labels: list[str], row_labels: list[str]):
    font = ImageFont.load_default()
    layout = grid_layout(cells[0][0].size, column_labels, row_labels, font)
    grid = Image.new("RGB", layout.size, "white")
    draw = ImageDraw.Draw(grid)
    for row, images in enumerate(cells):
        for column, image in enumerate(images):
            grid.paste(image, layout.cell_origins[row][column])
    for label, origin in zip(column_labels, layout.column_label_origins):
        draw.text(origin, label, fill="black", font=font)
    for label, origin in zip(row_labels, layout.row_label_origins):
        draw.text(origin, label, fill="black", font=font)
    return grid


def grid_paths(out: str) -> tuple[Path, Path]:
    """(grid file, folder for the cells): OUT.png + OUT-cells/, or OUT/grid.png + OUT/."""
    out_path = Path(out)
    if out_path.suffix.lower() == ".png":
        return out_path, out_path.with_name(f"{out_path.stem}-cells")
    return out_path / "grid.png", out_path


def generate_grid(options) -> list[Path]:
    x_axis = parse_axis(options.grid_x, "--grid-x")
    y_axis = parse_axis(options.grid_y, "--grid-y") if options.grid_y else None
    if y_axis is not None and y_axis.parameter == x_axis.parameter:
        raise TunelabError(f"--grid-x and --grid-y both sweep {x_axis.parameter}")
    if options.count != 1:
        raise TunelabError("--count cannot be combined with a grid; sweep seed=... instead")
    rows = [(y_axis.label(value), {y_axis.parameter: value}) for value in y_axis.values] if y_axis else [("", {})]
    columns = [(x_axis.label(value), {x_axis.parameter: value}) for value in x_axis.values]
    cell_options = [[replace(options, **row_values, **column_values) for _, column_values in columns] for _, row_values in rows]
    for row in cell_options:
        for cell in row:
            if cell.steps < 1:
                raise TunelabError("--grid steps values must be at least 1")

    session = prepare(cell_options[0][0])
    grid_file, cells_dir = grid_paths(options.out)
    images, paths = [], []
    for row_index, row in enumerate(cell_options):
        images.append([])
        for column_index, cell in enumerate(row):
            apply_image_options(session, cell)
            image = render(session, cell, cell.seed, text_inputs(session, cell))
            path = cells_dir / f"cell-r{row_index}-c{column_index}.png"
            paths.append(save_png(image, path, image_record(session, cell, cell.seed)))
            images[-1].append(image)
    grid_file.parent.mkdir(parents=True, exist_ok=True)
    draw_grid(images, [label for label, _ in columns], [label for label, _ in rows]).save(grid_file)
    return [*paths, grid_file]
