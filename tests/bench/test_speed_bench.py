"""`tunelab bench speed`: the fields are right and both sides ran (on tiny presets; not a speed test)."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import run_cli
from tunelab.bench import reference_step
from tunelab.bench.random_model import config_folder, random_pipeline
from tunelab.bench.speed import REFERENCE_CASES, RUN_STEPS
from tunelab.models.presets import PRESETS

# The reference script's fields, which both sides print.
REFERENCE_FIELDS = {"case", "params_m", "trainable_m", "batch", "s_per_step", "images_per_s", "peak_gib",
                    "tflop_per_step", "achieved_tflops"}
TINY_PRESETS = [name for name in ("tiny-sd", "tiny-sdxl", "tiny-flux") if name in PRESETS]


def bench_lines(capsys, *args) -> list[dict]:
    capsys.readouterr()
    assert run_cli("bench", "speed", "--steps", "2", "--warmup-steps", "1", *args) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def check_row(row: dict, batch: int) -> None:
    assert REFERENCE_FIELDS <= set(row)
    assert row["batch"] == batch and row["s_per_step"] > 0 and row["warmup_s"] >= 0
    assert row["images_per_s"] == pytest.approx(batch / row["s_per_step"], rel=0.02, abs=0.01)
    assert row["peak_gib"] is None and row["mfu"] is None  # on the CPU: no accelerator memory, no known peak
    assert row["tflop_per_step"] >= 0 and row["achieved_tflops"] >= 0
    assert row[f"run_{RUN_STEPS}_s"] == pytest.approx(row["warmup_s"] + RUN_STEPS * row["s_per_step"], abs=0.2)


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_bench_times_tunelab_and_the_reference_side_by_side(capsys, tmp_path, preset):
    out = tmp_path / "rows.jsonl"
    lines = bench_lines(capsys, "--preset", preset, "--batch", "2", "--out", out)
    assert [line["side"] for line in lines] == ["device", "reference", "tunelab", "ratio"]
    device, reference, tunelab, ratio = lines
    assert device["device"] == "cpu" and device["options"]["mixed_precision"] == "bf16"
    for row in (reference, tunelab):
        check_row(row, batch=2)
    assert reference["case"] == REFERENCE_CASES[(tunelab["family"], "lora")]
    assert tunelab["trainable_m"] > 0 and tunelab["resolution"] == reference["resolution"]
    assert ratio["images_per_s"] == pytest.approx(tunelab["images_per_s"] / reference["images_per_s"], rel=0.02)
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines


def test_a_technique_without_a_reference_case_is_timed_alone(capsys):
    lines = bench_lines(capsys, "--preset", "tiny-sd", "--method", "hypernetwork")
    assert [line["side"] for line in lines] == ["device", "tunelab"]
    check_row(lines[1], batch=1)


def test_flops_are_counted_through_the_trainers_step(monkeypatch, capsys):
    from torch.utils.flop_counter import FlopCounterMode

    counted = []
    original = FlopCounterMode.get_total_flops
    monkeypatch.setattr(FlopCounterMode, "get_total_flops", lambda self: counted.append(original(self)) or counted[-1])
    bench_lines(capsys, "--preset", "tiny-sd", "--no-reference")
    assert len(counted) == 1 and counted[0] > 0


def test_a_failing_side_is_reported_without_hiding_the_other(capsys, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(reference_step, "run_case", out_of_memory)
    capsys.readouterr()
    assert run_cli("bench", "speed", "--preset", "tiny-sd", "--steps", "1", "--warmup-steps", "0") == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["side"] for line in lines] == ["device", "reference", "tunelab"]
    assert lines[1] == {"side": "reference", "case": "sd15-lora32-bs4", "error": "RuntimeError: CUDA out of memory (simulated)"}
    check_row(lines[2], batch=1)


@pytest.mark.parametrize("args,message", [
    (["--preset", "tiny-sd", "--family", "sd"], "give one of --family"),
    (["--steps", "2"], "give one of --family"),
    (["--preset", "tiny-sd", "--method", "textual_inversion"], "--no-cache-text-embeddings"),
    (["--preset", "no-such-model"], "no-such-model"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    capsys.readouterr()
    assert run_cli("bench", "speed", *args) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


@pytest.mark.parametrize("family,builder", [("sd", reference_step.sd15_unet), ("sdxl", reference_step.sdxl_unet),
                                            ("flux", reference_step.flux_transformer)])
def test_real_size_models_have_the_reference_architecture(family, builder):
    """Built on the meta device: shapes only, no memory, no time."""
    pipeline = random_pipeline(config_folder(family), "meta", torch.bfloat16)
    with torch.device("meta"):
        reference = builder(False)[0]
    denoiser = getattr(pipeline, "transformer", None) or pipeline.unet
    assert denoiser.dtype == torch.bfloat16
    assert sum(p.numel() for p in denoiser.parameters()) == sum(p.numel() for p in reference.parameters())


def test_mfu_uses_the_cards_dense_bf16_peak():
    from tunelab.bench.speed import peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3") == peak_tflops("NVIDIA H200") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA GeForce GTX 1080") is None
