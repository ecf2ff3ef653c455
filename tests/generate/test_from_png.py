"""`tunelab generate --from-png`: the PNG's record regenerates it bit for bit; flags override the record."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from helpers import run_cli
from tunelab.generation.png_info import read_record


def pixels(path):
    return np.asarray(Image.open(path))


def test_from_png_regenerates_identically_and_flags_override(tmp_path, trained_lora):
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    shutil.copy(trained_lora, adapters / "toy.safetensors")
    assert run_cli("generate", "--model", "tiny-sd", "--prompt", "a (photo:1.3) of <lora:toy:0.6>sks toy",
                   "--negative-prompt", "blurry", "--adapters-dir", adapters, "--steps", "4", "--sampler", "dpm++_2m",
                   "--guidance", "5", "--width", "48", "--seed", "7", "--count", "2", "--out", tmp_path / "first") == 0
    second = tmp_path / "first" / "001-8.png"

    # The record names the LoRA by its tag; the adapters folder is this run's, never the PNG's.
    assert run_cli("generate", "--from-png", second, "--adapters-dir", adapters, "--out", tmp_path / "again.png") == 0
    assert np.array_equal(pixels(second), pixels(tmp_path / "again.png"))
    assert read_record(tmp_path / "again.png")["options"] == read_record(second)["options"]

    assert run_cli("generate", "--from-png", second, "--seed", "7", "--adapters-dir", adapters, "--out", tmp_path / "seed7.png") == 0
    assert np.array_equal(pixels(tmp_path / "first" / "000-7.png"), pixels(tmp_path / "seed7.png"))
    record = read_record(tmp_path / "seed7.png")
    assert record["seed"] == 7 and record["sampler"] == "dpm++_2m" and record["width"] == 48


def test_from_png_without_a_record_is_a_clear_error(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert run_cli("generate", "--from-png", tmp_path / "plain.png", "--out", tmp_path / "x.png") != 0
    assert "holds no tunelab record" in capsys.readouterr().err


def test_from_png_reproduces_schedules_and_and_bit_exactly(tmp_path):
    prompt = "a photo of [cat:dog:0.5] AND [red|blue] toy :0.6"
    negative = "[blurry::2], [ugly|dark]"
    assert run_cli("generate", "--model", "tiny-sd", "--prompt", prompt, "--negative-prompt", negative, "--steps", "4",
                   "--sampler", "heun", "--seed", "3", "--comma-backtrack", "5", "--out", tmp_path / "first.png") == 0
    record = read_record(tmp_path / "first.png")
    assert record["prompt"] == prompt and record["negative_prompt"] == negative  # the prompt as written
    assert record["options"]["comma_backtrack"] == 5
    assert run_cli("generate", "--from-png", tmp_path / "first.png", "--out", tmp_path / "again.png") == 0
    assert np.array_equal(pixels(tmp_path / "first.png"), pixels(tmp_path / "again.png"))
    assert run_cli("generate", "--from-png", tmp_path / "first.png", "--prompt", "a photo of cat AND red toy :0.6",
                   "--out", tmp_path / "unscheduled.png") == 0
    assert not np.array_equal(pixels(tmp_path / "first.png"), pixels(tmp_path / "unscheduled.png"))


def test_a_crafted_png_cannot_choose_where_to_write_or_which_folders_to_read(tmp_path, capsys):
    from tunelab.generation.png_info import save_png

    record = {"prompt": "a <lora:toy:1> photo", "seed": 1, "steps": 2, "sampler": "euler", "guidance": 5.0, "width": 32,
              "height": 32, "model": "tiny-sd",
              "options": {"model": "tiny-sd", "prompt": "a photo of a toy", "steps": 2, "seed": 1,
                          "out": str(tmp_path / "elsewhere.png"), "adapters_dir": str(tmp_path), "count": 3}}
    save_png(Image.new("RGB", (32, 32)), tmp_path / "crafted.png", record)
    assert run_cli("generate", "--from-png", tmp_path / "crafted.png", "--out", tmp_path / "asked.png") == 0
    assert (tmp_path / "asked.png").is_file() and not (tmp_path / "elsewhere.png").exists()
    assert not list(tmp_path.glob("asked*/*"))  # one image: the record's count is not taken either

    record["options"]["not_an_option"] = 1
    save_png(Image.new("RGB", (32, 32)), tmp_path / "unknown.png", record)
    assert run_cli("generate", "--from-png", tmp_path / "unknown.png", "--out", tmp_path / "x.png") == 2
    assert "records options tunelab does not know (not_an_option)" in capsys.readouterr().err


def test_adapter_files_a_png_names_are_taken_by_name_from_this_runs_adapters_dir(tmp_path, trained_lora, capsys):
    elsewhere, mine = tmp_path / "elsewhere", tmp_path / "mine"
    for folder in (elsewhere, mine):
        folder.mkdir()
        shutil.copy(trained_lora, folder / "toy.safetensors")
    assert run_cli("generate", "--model", "tiny-sd", "--prompt", "a photo of sks toy", "--lora", f"{elsewhere / 'toy.safetensors'}:0.7",
                   "--steps", "2", "--seed", "3", "--out", tmp_path / "first.png") == 0
    shutil.rmtree(elsewhere)  # the recorded folder is never read again
    assert run_cli("generate", "--from-png", tmp_path / "first.png", "--out", tmp_path / "x.png") == 2
    err = capsys.readouterr().err
    assert "was made with LoRA file toy.safetensors; pass --adapters-dir" in err and len(err.strip().splitlines()) == 1
    assert run_cli("generate", "--from-png", tmp_path / "first.png", "--adapters-dir", mine, "--out", tmp_path / "again.png") == 0
    assert np.array_equal(pixels(tmp_path / "first.png"), pixels(tmp_path / "again.png"))
    assert read_record(tmp_path / "again.png")["options"]["lora"] == [f"{mine / 'toy.safetensors'}:0.7"]
