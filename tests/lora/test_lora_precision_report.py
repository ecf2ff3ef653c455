"""`tunelab lora precision-report`: file size and output deviation of fp16 and bf16 against fp32."""

from __future__ import annotations

import re

from helpers import run_cli
from lora_tool_helpers import mixed_keys, random_lora
from tunelab.formats.lora_io import write_lora
from tunelab.models.presets import build_preset


def test_report_prints_size_and_deviation_per_precision(tmp_path, capsys):
    pipeline = build_preset("tiny-sd")
    lora = random_lora(pipeline, mixed_keys(pipeline), rank=8, alpha=8.0)
    path = write_lora(lora, tmp_path / "lora.safetensors", "kohya", {})

    assert run_cli("lora", "precision-report", path, "--model", "tiny-sd", "--prompt", "a red disc") == 0
    text = capsys.readouterr().out
    assert "prompt 'a red disc'" in text
    rows = {}
    for line in text.splitlines():
        match = re.match(r"(fp32|fp16|bf16)\s+([\d.]+) KiB\s+(\S+)\s+(\S+)\s+([\d.]+)%", line)
        if match:
            name, size, max_dev, rms, relative = match.groups()
            rows[name] = (float(size), float(max_dev), float(rms), float(relative))
    assert set(rows) == {"fp32", "fp16", "bf16"}

    assert rows["fp32"][1:] == (0.0, 0.0, 0.0)
    assert 0 < rows["fp16"][2] < rows["bf16"][2]  # bf16 keeps 8 mantissa bits, fp16 11
    assert rows["bf16"][3] < 5.0  # percent of the LoRA's own effect
    assert rows["fp16"][0] < 0.6 * rows["fp32"][0]
    assert abs(rows["bf16"][0] - rows["fp16"][0]) < 0.01 * rows["fp16"][0]  # same bytes; headers say BF16 / F16
