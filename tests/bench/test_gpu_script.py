"""benchmarks/gpu_speed.py, the prepared GPU run: its rows are the issue's targets and it runs (tiny, on the CPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tunelab.cli import build_parser

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_speed.py"


@pytest.fixture(scope="module")
def gpu_speed():
    spec = importlib.util.spec_from_file_location("gpu_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_are_the_issue_targets_and_parse(gpu_speed):
    targets = {name: args for name, args, _, _ in gpu_speed.TARGETS}
    assert set(targets) == {"sd15-lora32-bs4-512", "sdxl-lora32-bs4-1024", "sdxl-full-bs1-1024", "flux1024-lora16-bs1"}
    for name, args in targets.items():
        flux = name.startswith("flux")
        assert ("--no-reference-cudnn-sdp" in args) == flux
    parser = build_parser("bench")
    for name, args, tiny, _ in gpu_speed.plan():
        for arguments in (gpu_speed.bench_arguments(args, None, 10), gpu_speed.bench_arguments(args, tiny, 10)):
            parsed = parser.parse_args(["bench", "speed", *arguments])
            assert parsed.steps == 10
        real = parser.parse_args(["bench", "speed", *gpu_speed.bench_arguments(args, None, 10)])
        assert real.family in ("sd", "sdxl", "flux", "sd3") and real.resolution in (512, 1024)


def test_one_tiny_row_runs_and_makes_a_table(gpu_speed, tmp_path, capsys):
    assert gpu_speed.run(tmp_path, budget=300, steps=1, tiny=True, only=["sd15-lora32-bs4-512"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "speed.jsonl").read_text().splitlines()]
    assert [row["side"] for row in rows] == ["row", "device", "reference", "tunelab", "ratio"]
    table = gpu_speed.table(tmp_path / "speed.jsonl")
    assert "| sd15-lora32-bs4-512 | tunelab | sd-lora-bs4-32px |" in table
    assert "== sd15-lora32-bs4-512: " in (tmp_path / "rows.log").read_text()
