"""X/Y grids: each cell is the image generate gives for those options alone; the grid holds them all, labelled."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFont

from helpers import run_cli
from tunelab.errors import TunelabError
from tunelab.generation.grid import grid_layout, parse_axis
from tunelab.generation.png_info import read_record


def pixels(image_or_path):
    image = Image.open(image_or_path) if not isinstance(image_or_path, Image.Image) else image_or_path
    return np.asarray(image.convert("RGB"))


def test_lora_weight_by_sampler_grid_cells_equal_single_images(tmp_path, trained_lora):
    base = ["generate", "--model", "tiny-sd", "--prompt", "a photo of sks toy", "--steps", "4", "--seed", "5"]
    assert run_cli(*base, "--lora", trained_lora, "--grid-x", "lora_weight=0.5,1", "--grid-y", "sampler=euler,ddim",
                   "--out", tmp_path / "grid") == 0
    grid = Image.open(tmp_path / "grid" / "grid.png")
    layout = grid_layout((32, 32), ["lora_weight=0.5", "lora_weight=1.0"], ["sampler=euler", "sampler=ddim"],
                         ImageFont.load_default())
    assert grid.size == layout.size and grid.size[0] > 2 * 32 and grid.size[1] > 2 * 32

    for row, sampler in enumerate(["euler", "ddim"]):
        for column, weight in enumerate(["0.5", "1"]):
            assert run_cli(*base, "--lora", f"{trained_lora}:{weight}", "--sampler", sampler,
                           "--out", tmp_path / f"single-{row}{column}.png") == 0
            single = pixels(tmp_path / f"single-{row}{column}.png")
            cell_file = tmp_path / "grid" / f"cell-r{row}-c{column}.png"
            assert np.array_equal(pixels(cell_file), single), (sampler, weight)
            x, y = layout.cell_origins[row][column]
            assert np.array_equal(pixels(grid.crop((x, y, x + 32, y + 32))), single)
            assert read_record(cell_file)["loras"][0][1] == float(weight)
    # labels are drawn: the margins are not blank
    assert pixels(grid.crop((0, 0, grid.size[0], layout.cell_origins[0][0][1]))).min() < 128


def test_one_axis_grid_sweeps_seed_and_steps_rejects_bad_values(tmp_path):
    assert run_cli("generate", "--model", "tiny-sd", "--prompt", "a red car", "--steps", "3", "--grid-x", "seed=1,2,3",
                   "--out", tmp_path / "seeds.png") == 0
    cells = sorted((tmp_path / "seeds-cells").iterdir())
    assert [read_record(path)["seed"] for path in cells] == [1, 2, 3]
    assert run_cli("generate", "--model", "tiny-sd", "--prompt", "a red car", "--steps", "3", "--seed", "2",
                   "--out", tmp_path / "two.png") == 0
    assert np.array_equal(pixels(cells[1]), pixels(tmp_path / "two.png"))
    assert Image.open(tmp_path / "seeds.png").size[0] >= 3 * 32

    with pytest.raises(TunelabError, match="'x' is not an integer"):
        parse_axis("steps=4,x", "--grid-x")
    with pytest.raises(TunelabError, match="PARAM one of seed, steps"):
        parse_axis("width=32,64", "--grid-x")
