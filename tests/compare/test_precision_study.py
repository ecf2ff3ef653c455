"""The precision study: an artifact stored in fp32, fp16 and bf16, its sizes and its images' deviation from fp32's."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from tiny_embedders import save_tiny_clip, save_tiny_dinov2

from tunelab.comparison.config import compare_config_from
from tunelab.comparison.precision_study import psnr, run_study, study_spec
from tunelab.comparison.report import markdown
from tunelab.comparison.run import experiment_spec
from tunelab.errors import TunelabError
from tunelab.evaluate.dreambench_protocol import Embedders
from tunelab.formats.safetensors_io import save_tensors
from tunelab.formats.stored_precision import stored_in_precision


def test_psnr_of_known_differences():
    image = np.full((4, 4, 3), 100, dtype=np.uint8)
    assert psnr([image, image], [image, image]) is None  # identical
    assert psnr([image + 1], [image]) == pytest.approx(10 * math.log10(255**2), abs=1e-9)  # MSE 1
    half = image.copy()
    half[:2] += 4  # half the pixels off by 4: MSE 8
    assert psnr([half], [image]) == pytest.approx(10 * math.log10(255**2 / 8), abs=1e-9)


def test_an_artifact_is_stored_in_each_precision_with_its_metadata(tmp_path):
    source = save_tensors({"w": torch.linspace(-1, 1, 1000), "steps": torch.tensor([3])}, tmp_path / "a.safetensors",
                          {"ss_network_dim": "4"})
    for precision, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        target = stored_in_precision(source, precision, tmp_path / precision / "a.safetensors")
        with safe_open(str(target), framework="pt") as reader:
            assert reader.get_tensor("w").dtype == dtype and reader.get_tensor("steps").dtype == torch.int64
            assert reader.metadata() == {"ss_network_dim": "4"}
        assert target.stat().st_size < 0.6 * source.stat().st_size
    folder = tmp_path / "pipeline" / "unet"
    folder.mkdir(parents=True)
    save_tensors({"w": torch.ones(8)}, folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    copy = stored_in_precision(tmp_path / "pipeline", "bf16", tmp_path / "pipeline-bf16")
    assert (copy / "unet" / "config.json").is_file()
    with safe_open(str(copy / "unet" / "model.safetensors"), framework="pt") as reader:
        assert reader.get_tensor("w").dtype == torch.bfloat16
    overflowing = save_tensors({"w": torch.tensor([1e6])}, tmp_path / "big.safetensors")
    with pytest.raises(TunelabError, match="NaN or infinite"):  # past fp16's largest value, 65504
        stored_in_precision(overflowing, "fp16", tmp_path / "big16.safetensors")


def test_the_study_of_a_trained_lora(trained_lora, subject_images, tmp_path):
    root = tmp_path / "models"
    embedders = Embedders(str(save_tiny_clip(root / "clip")), str(save_tiny_dinov2(root / "dino")))
    config = compare_config_from({"model": "tiny-sd", "subject": str(subject_images), "prompt": "a photo of sks toy",
                                  "images_per_prompt": 2, "sample_steps": 3, "precision_study": "lora",
                                  "experiments": [{"name": "lora", "technique": "lora"}]}, "c.yaml")
    spec = study_spec(experiment_spec(config, config.experiments[0], tmp_path, "cpu", subject_images), str(trained_lora),
                      embedders)
    study = run_study(spec)
    rows = {row["precision"]: row for row in study["precisions"]}
    assert list(rows) == ["fp32", "fp16", "bf16"] and study["images"] == 2
    assert rows["fp32"]["psnr_db"] is None and rows["fp32"]["max_pixel_difference"] == 0  # the reference itself
    assert rows["fp32"]["clip_distance"] == pytest.approx(0, abs=1e-6) and rows["fp32"]["dino_distance"] == pytest.approx(0, abs=1e-6)
    def data_bytes(precision):  # a .safetensors file: 8 bytes of header length, the JSON header, then the tensors
        stored = Path(spec["out"]) / precision / trained_lora.name
        assert stored.stat().st_size == rows[precision]["bytes"]
        return rows[precision]["bytes"] - 8 - int.from_bytes(stored.read_bytes()[:8], "little")

    assert data_bytes("fp16") * 2 == data_bytes("bf16") * 2 == data_bytes("fp32")  # every tensor of a LoRA is float
    assert all(rows[precision]["psnr_db"] is None or rows[precision]["psnr_db"] > 20 for precision in ("fp16", "bf16"))
    report = markdown([{"name": "lora", "technique": "lora", "precision_study": study}], "t", [])
    assert "## Precision study: lora" in report and "| fp32 | " in report and "identical" in report


def test_the_study_must_name_an_experiment(subject_images):
    with pytest.raises(TunelabError, match="precision_study names no experiment: 'lroa' \\(did you mean 'lora'\\?\\)"):
        compare_config_from({"model": "tiny-sd", "subject": str(subject_images), "prompt": "a photo of sks toy",
                             "precision_study": "lroa", "experiments": [{"name": "lora", "technique": "lora"}]}, "c.yaml")
