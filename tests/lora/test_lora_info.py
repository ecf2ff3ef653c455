"""`tunelab lora info`: what a LoRA file holds, for people and as JSON."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import run_cli
from lora_tool_helpers import mixed_keys, random_lora
from tunelab.formats.kohya_lora import kohya_metadata
from tunelab.formats.lora_io import write_lora
from tunelab.models.presets import build_preset


@pytest.fixture(scope="module")
def mixed_rank_file(tmp_path_factory):
    pipeline = build_preset("tiny-sd")
    keys = mixed_keys(pipeline)
    lora = {**random_lora(pipeline, keys[:3], rank=4, alpha=4.0), **random_lora(pipeline, keys[3:], rank=2, alpha=1.0)}
    lora = {key: module.to(torch.float16) for key, module in lora.items()}
    path = tmp_path_factory.mktemp("info") / "mixed.safetensors"
    return write_lora(lora, path, "kohya", kohya_metadata(lora, "sd_v1", {"ss_output_name": "toy", "long": "x" * 500}))


def test_text_summary_names_modules_ranks_alphas_precision_size_and_metadata(mixed_rank_file, capsys):
    assert run_cli("lora", "info", mixed_rank_file) == 0
    text = capsys.readouterr().out
    assert "format      kohya" in text
    assert f"size        {mixed_rank_file.stat().st_size / 1024:.2f} KiB" in text
    assert "modules     9: text_encoder 3, unet 6" in text
    assert "kinds       conv 1x1 1, conv 3x3 1, linear 7" in text
    assert "rank        2 (6 modules), 4 (3 modules)" in text
    assert "alpha       1.0 (6 modules), 4.0 (3 modules)" in text
    assert "precision   float16 (all modules)" in text
    assert "  ss_output_name = toy" in text and "ss_network_dim = 4" in text
    assert "x" * 97 + "..." in text and "x" * 101 not in text  # long values are cut
    assert "unet.down_blocks.1.resnets.0.conv1" not in text  # modules only with --modules

    assert run_cli("lora", "info", mixed_rank_file, "--modules") == 0
    assert "  unet.down_blocks.1.resnets.0.conv1  conv 3x3  32x16x3x3  r=2  alpha=1  float16" in capsys.readouterr().out


def test_json_summary(mixed_rank_file, capsys):
    assert run_cli("lora", "info", mixed_rank_file, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "kohya" and summary["size_bytes"] == mixed_rank_file.stat().st_size
    assert summary["ranks"] == {"2": 6, "4": 3} and summary["dtypes"] == {"float16": 9}
    assert summary["metadata"]["long"] == "x" * 500
    conv = next(module for module in summary["modules"] if module["key"] == "unet.down_blocks.1.resnets.0.conv1")
    assert conv == {"key": "unet.down_blocks.1.resnets.0.conv1", "algorithm": "lora", "kind": "conv 3x3", "shape": [32, 16, 3, 3],
                    "rank": 2, "alpha": 1.0, "dtype": "float16"}
    assert summary["parameters"] == sum((module["shape"][0] + math.prod(module["shape"][1:])) * module["rank"]
                                        for module in summary["modules"])


def test_extraction_settings_are_reported_from_the_files_record(tmp_path, capsys):
    pipeline = build_preset("tiny-sd")
    lora = random_lora(pipeline, mixed_keys(pipeline)[:2], rank=4, alpha=4.0)
    records = {
        "current": {"rank": 8, "conv_rank": 4, "clamp_quantile": 0.99, "clamp_mode": "kohya", "modules": "kohya"},
        # written before --clamp-mode/--modules: tunelab then always used the absolute rule on every module
        "older": {"rank": 8, "conv_rank": None, "clamp_quantile": 0.99},
        "unclamped": {"rank": 8, "conv_rank": None, "clamp_quantile": 1.0, "clamp_mode": "absolute", "modules": "all"},
    }
    expected = {
        "current": "extracted   clamp kohya at quantile 0.99; modules kohya; rank 8, conv rank 4",
        "older": "extracted   clamp absolute at quantile 0.99; modules all; rank 8, conv rank none (3x3 convs left out)",
        "unclamped": "extracted   clamp none; modules all; rank 8, conv rank none (3x3 convs left out)",
    }
    for name, record in records.items():
        path = write_lora(lora, tmp_path / f"{name}.safetensors", "kohya", kohya_metadata(lora, "sd_v1", {"tunelab_extract": json.dumps(record)}))
        assert run_cli("lora", "info", path) == 0
        assert expected[name] in capsys.readouterr().out
        assert run_cli("lora", "info", path, "--json") == 0
        extraction = json.loads(capsys.readouterr().out)["extraction"]
        assert (extraction["clamp_mode"], extraction["modules"]) == (record.get("clamp_mode", "absolute"), record.get("modules", "all"))

    plain = write_lora(lora, tmp_path / "plain.safetensors", "kohya", kohya_metadata(lora, "sd_v1"))
    assert run_cli("lora", "info", plain) == 0
    assert "extracted" not in capsys.readouterr().out
