"""`tunelab compare` with clip/dino: DreamBench's metrics for a folder subject, on tiny random CLIP and DINOv2 models."""

import json
from pathlib import Path

import pytest
from helpers import write_subject_images
from tiny_embedders import save_tiny_clip, save_tiny_dinov2

from tunelab.comparison.config import compare_config_from
from tunelab.comparison.report import write_reports
from tunelab.comparison.run import experiment_spec, finish_records
from tunelab.comparison.worker import evaluate_experiment
from tunelab.evaluate.dreambench_prompts import OBJECT_PROMPTS


@pytest.fixture(scope="module")
def embedders(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare-embedders")
    return save_tiny_clip(root / "clip"), save_tiny_dinov2(root / "dino")


def test_a_folder_subject_gets_dreambench_numbers(embedders, trained_lora, subject_images, tmp_path):
    """The worker's evaluation in this process (a compare run starts one process per experiment: too slow here)."""
    clip, dino = embedders
    config = compare_config_from({"model": "tiny-sd", "subject": str(subject_images), "prompt": "a photo of sks toy",
                                  "class_word": "toy", "clip": str(clip), "dino": str(dino), "images_per_prompt": 1,
                                  "sample_steps": 2, "experiments": [{"name": "lora", "technique": "lora", "rank": 4}]},
                                 "c.yaml")
    records = []
    for experiment, artifact in ((None, None), (config.experiments[0], str(trained_lora))):
        spec = experiment_spec(config, experiment, tmp_path, "cpu", subject_images)
        Path(spec["out"]).mkdir(parents=True)
        assert spec["evaluation"]["dreambench"]["subject_noun"] == "sks toy"
        records.append({"name": spec["name"], "technique": spec["technique"], "train_seconds": 1.0,
                        **evaluate_experiment(spec, artifact)})
    for record in records:
        assert all(-1 <= record[metric] <= 1 for metric in ("clip_i", "clip_t", "dino")), record
        details = record["embedding_details"]
        assert details["clip_i"]["pairs"] == len(OBJECT_PROMPTS) * 4  # 25 prompts x 1 image against 4 real images
        assert details["dino"]["backbone"]["architecture"].startswith("Dinov2Model")
        assert "subject_fidelity" not in record  # toyworld's metrics need its renderer
    assert records[0]["clip_i"] != records[1]["clip_i"]  # the LoRA changed the images
    write_reports(finish_records(records, config), tmp_path, "t", [])
    report = (tmp_path / "report.md").read_text()
    assert "| CLIP-I | CLIP-T | DINO |" in report and f"{records[1]['dino']:.3f}" in report
    assert "DINO measured with dino (Dinov2Model" in report
    assert f"against each other: {records[0]['embedding_details']['dino']['real_images']:.3f}." in report
    assert json.loads((tmp_path / "results.json").read_text())[1]["clip_t"] == records[1]["clip_t"]


def test_embedder_settings_are_checked_before_anything_runs(embedders, tmp_path):
    clip, dino = embedders
    photos = write_subject_images(tmp_path / "photos")
    base = {"model": "tiny-sd", "subject": str(photos), "prompt": "a photo of sks toy",
            "experiments": [{"name": "lora", "technique": "lora", "steps": 2}]}
    cases = [({"clip": str(dino), "class_word": "toy"}, "is not a CLIP model"),
             ({"dino": str(tmp_path / "nowhere"), "class_word": "toy"}, "DINO model folder not found"),
             ({"clip": str(clip)}, "needs 'class_word'"),
             ({"clip": str(clip), "class_word": "toy", "prompt_set": "dreambench_objects"}, "did you mean 'dreambench_object'")]
    for changes, message in cases:
        with pytest.raises(Exception, match=message):
            compare_config_from({**base, **changes}, "c.yaml")
    # Unset, the new settings leave the fingerprint as comparisons written before them have it.
    assert "clip" not in compare_config_from(base, "c.yaml").fingerprint()
    assert "clip" in compare_config_from({**base, "clip": str(clip), "class_word": "toy"}, "c.yaml").fingerprint()
