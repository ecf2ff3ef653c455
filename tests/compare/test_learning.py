"""Does each technique really learn? The demo's comparison, as `tunelab demo` runs it, on the shipped toyworld base.

Every technique must raise subject fidelity over the untuned base by a clear margin and keep
following prompts; the reports must carry the run's own numbers, and a second run must reuse them.
"""

import base64
import io
import json
from dataclasses import replace

import pytest
from PIL import Image

from tunelab.comparison.demo_settings import demo_config
from tunelab.comparison.report import write_reports
from tunelab.comparison.run import run_comparison

MARGIN = 0.08  # subject fidelity over the base's (0.02); on the generation-5 base the techniques reach 0.21 (TI, hypernetwork) to 0.44 (DreamBooth)
PROMPT_FIDELITY_FLOOR = 0.5  # of the base's prompt fidelity
EVALUATION_IMAGES = 8  # per prompt: the suite's time (the demo's 128 cost a minute each; at 8 scores move about 0.07)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    config = demo_config("bullseye")
    config = replace(config, options=replace(config.options, images_per_prompt=EVALUATION_IMAGES))
    return config, out, run_comparison(config, out)


def test_every_technique_learns_the_subject_and_still_follows_prompts(comparison):
    _, _, records = comparison
    base, tuned = records[0], records[1:]
    assert base["technique"] == "base" and [r["technique"] for r in tuned] == ["lora", "dreambooth", "textual_inversion", "hypernetwork"]
    for record in tuned:
        assert record["subject_fidelity"] >= base["subject_fidelity"] + MARGIN, record
        assert record["prompt_fidelity"] >= PROMPT_FIDELITY_FLOOR * base["prompt_fidelity"], record


# Issue 15's subject-fidelity bars. Strict: each passes the day a base and settings that reach it ship
# (docs/compare.md: the demo's numbers on the bullseye are far below them).
SHORT_OF_ISSUE_15 = {"dreambooth": 0.7, "lora": 0.6, "hypernetwork": 0.5}


@pytest.mark.parametrize("technique", [pytest.param(t, marks=pytest.mark.xfail(strict=True, reason="issue 15: the demo falls short"))
                                       for t in SHORT_OF_ISSUE_15])
def test_issue_15_subject_fidelity_bar(comparison, technique):
    _, _, records = comparison
    record = next(r for r in records if r["technique"] == technique)
    assert record["subject_fidelity"] >= SHORT_OF_ISSUE_15[technique]


def test_textual_inversion_goes_beyond_the_base_and_lora_and_dreambooth_keep_the_prompt(comparison):
    """Issue 15's bars that the demo meets: Textual Inversion >= base + 0.15, LoRA's and DreamBooth's prompt fidelity >= 0.8."""
    _, _, records = comparison
    by_technique = {r["technique"]: r for r in records}
    assert by_technique["textual_inversion"]["subject_fidelity"] >= by_technique["base"]["subject_fidelity"] + 0.15
    assert by_technique["lora"]["prompt_fidelity"] >= 0.8
    assert by_technique["dreambooth"]["prompt_fidelity"] >= 0.8


def test_records_and_reports_hold_the_runs_own_numbers(comparison, tmp_path):
    config, out, records = comparison
    paths = write_reports(records, out, "test", [])
    written = json.loads(paths["json"].read_text())
    for record in written:
        on_disk = json.loads((out / "experiments" / record["name"] / "result.json").read_text())
        assert record["train_seconds"] == on_disk["train_seconds"] and record["subject_fidelity"] == on_disk["subject_fidelity"]
        assert record["usd"] == pytest.approx(record["train_seconds"] / 3600 * 0.29, abs=1e-6)
        for key in ("technique", "train_seconds", "peak_memory_mb", "trainable_params", "artifact_bytes", "usd",
                    "subject_fidelity", "prompt_fidelity", "prior_drift"):
            assert key in record
    tuned = {r["technique"]: r for r in written[1:]}
    assert tuned["textual_inversion"]["trainable_params"] == 2 * 64  # two vectors of the text encoder's width
    assert tuned["lora"]["trainable_params"] < tuned["dreambooth"]["trainable_params"]
    assert all(r["train_seconds"] > 0 and r["peak_memory_mb"] > 0 and r["artifact_bytes"] > 0 for r in tuned.values())
    assert all(len(r["loss_curve"]) > 0 for r in tuned.values())
    page = paths["html"].read_text()
    images = page.split('src="data:image/png;base64,')[1:]
    assert len(images) == len(written)  # a sample grid per experiment, inline: the page needs no other file
    for encoded in images:
        grid = Image.open(io.BytesIO(base64.b64decode(encoded.split('"', 1)[0])))
        assert grid.size[0] > 32 * 8 and grid.size[1] > 32 * 3
    for record in written:
        assert f"{record['subject_fidelity']:.3f}" in page and f"{record['train_seconds']:.1f}" in page


def test_a_second_run_reuses_results_and_a_changed_experiment_runs_again(comparison):
    config, out, _ = comparison
    results = {name: (out / "experiments" / name / "result.json") for name in ("base", "lora", "textual_inversion")}
    before = {name: path.stat().st_mtime_ns for name, path in results.items()}
    run_comparison(config, out)
    assert {name: path.stat().st_mtime_ns for name, path in results.items()} == before
    experiments = list(config.experiments)
    experiments[2] = replace(experiments[2], training={**experiments[2].training, "steps": 3})
    run_comparison(replace(config, experiments=experiments), out)
    assert results["textual_inversion"].stat().st_mtime_ns != before["textual_inversion"]
    assert results["lora"].stat().st_mtime_ns == before["lora"]
    assert json.loads(results["textual_inversion"].read_text())["steps"] == 3
