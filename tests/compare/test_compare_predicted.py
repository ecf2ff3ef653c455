"""`tunelab demo --with-hyper`: the weight predictor's LoRA, predicted and refined, as rows of the comparison with
their sample grids, at a small scale on the shipped toyworld base and predictor."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import run_cli
from tunelab.comparison.demo_settings import demo_config


def test_the_demo_with_hyper_adds_the_predicted_rows_after_the_four():
    config = demo_config("bullseye", scale=0.25, with_hyper=True)
    assert [e.name for e in config.experiments] == ["lora", "dreambooth", "textual_inversion", "hypernetwork", "hyper",
                                                    "hyper_refined"]
    hyper, refined = config.experiments[-2:]
    assert hyper.technique == refined.technique == "predicted_lora"
    assert hyper.training["steps"] == 0 and refined.training["steps"] == 8  # a prediction alone stays at 0 steps
    assert refined.training["class_prompt"] == "a circle" and "learning_rate" not in refined.training  # the technique's rate
    assert [e.name for e in demo_config("bullseye").experiments][-1] == "hypernetwork"  # without the flag: the four


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """The demo's two predicted rows on the checker (whose own identifier is 'zwx': the predictor's 'sks' names it),
    a few refine steps and few evaluation images."""
    experiments = [e for e in demo_config("checker", scale=0.1, with_hyper=True).experiments if e.technique == "predicted_lora"]
    config = {"model": "toyworld", "subject": "checker", "images_per_prompt": 2, "sample_steps": 4, "metrics": ["subject_fidelity"],
              "experiments": [{"name": e.name, "technique": e.technique, **e.training, "num_class_images": 2,
                               "class_sample_steps": 2} if e.training["steps"] else {"name": e.name, "technique": e.technique,
                                                                                      **e.training}
                              for e in experiments]}
    folder = tmp_path_factory.mktemp("compare-predicted")
    (folder / "c.yaml").write_text(yaml.safe_dump(config))
    assert run_cli("compare", folder / "c.yaml", "--out", folder / "out") == 0
    return folder / "out"


def test_the_report_has_the_predicted_rows_with_their_samples(compared):
    records = {record["name"]: record for record in json.loads((compared / "results.json").read_text())}
    assert list(records) == ["base", "hyper", "hyper_refined"]
    assert records["hyper"]["steps"] == 0 and records["hyper_refined"]["steps"] == 3
    for name in ("hyper", "hyper_refined"):
        record = records[name]
        assert record["train_seconds"] > 0 and record["artifact"].endswith("lora.safetensors") and record["artifact_bytes"] > 0
        assert record["subject_fidelity"] is not None and record["samples"].endswith("samples.png")
        assert (compared / "experiments" / name / "samples.png").is_file()
        assert "a sks square" in record["sample_prompts"]["subject"]  # the predictor's token names the subject
        run = yaml.safe_load((compared / "experiments" / name / "config.yaml").read_text())
        assert run["prompt"] == "a sks square" and run["hypernet"] == "toyworld"
    report = (compared / "report.md").read_text()
    assert "| hyper | predicted_lora |" in report and "| hyper_refined | predicted_lora |" in report
    page = (compared / "report.html").read_text()
    assert len(page.split('src="data:image/png;base64,')[1:]) == 3  # a sample grid per row, the base's too
