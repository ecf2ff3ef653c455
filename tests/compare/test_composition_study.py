"""The composition study: two LoRAs of two subjects, each concept's fidelity alone, together, merged by concat and by SVD;
and experiments on subjects of their own (each with its own base)."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

import tunelab
from helpers import one_line_error, run_cli
from tunelab.comparison import composition_study, runner, worker
from tunelab.comparison.report import markdown
from tunelab.evaluate.protocol import Evaluation, evaluate_subject
from tunelab.formats.lora_io import read_lora_file
from tunelab.toyworld.subjects import SUBJECTS

MODEL = "tiny-sd"  # random weights: the study's plumbing and equalities, not what a LoRA learns (docs/compare.md has that)
EVALUATION = {"images_per_prompt": 2, "sample_steps": 2, "guidance": 5.0, "seed": 1000}
LORA_A = {"name": "lora_a", "technique": "lora", "steps": 2, "rank": 2, "learning_rate": 0.05, "batch_size": 2}
LORA_B = {"name": "lora_b", "technique": "lora", "steps": 2, "rank": 4, "learning_rate": 0.05, "batch_size": 2,
          "subject": "checker"}


def write_config(path, **changes):
    config = {"model": MODEL, "subject": "bullseye", "metrics": ["subject_fidelity", "prior_drift"], **EVALUATION,
              "experiments": [LORA_A, LORA_B], "composition": {"loras": ["lora_a", "lora_b"]}, **changes}
    path.write_text(yaml.safe_dump(config))
    return path


def in_this_process(spec: dict, env=None) -> None:
    Path(spec["out"]).mkdir(parents=True, exist_ok=True)
    assert worker.main([json.dumps(spec)]) == 0


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    """A tiny comparison: lora_a learns the bullseye (the shared subject), lora_b the checker (its own). The workers
    and the study run in this process (a process each is too slow here; test_compare_command runs them as processes)."""
    folder = tmp_path_factory.mktemp("composition")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "run_worker", in_this_process)
        patch.setattr(composition_study, "run_module",
                      lambda module, spec: worker.main([json.dumps(spec)], run=composition_study.run_study))
        assert run_cli("compare", write_config(folder / "c.yaml"), "--out", folder / "out") == 0
    records = {record["name"]: record for record in json.loads((folder / "out" / "results.json").read_text())}
    return folder / "out", records


def subject_images(path) -> list[np.ndarray]:
    return Evaluation.load_images(path).rows["subject"][1]


def test_each_experiment_is_measured_on_its_own_subject_against_its_own_base(composed):
    out, records = composed
    assert list(records) == ["base", "base-checker", "lora_a", "lora_b"]
    assert [records[name]["subject"] for name in records] == ["bullseye", "checker", "bullseye", "checker"]
    assert records["lora_b"]["sample_prompts"]["subject"] == ["a zwx square"]  # the checker's token and class
    assert sorted(p.name for p in (out / "data").iterdir()) == ["bullseye", "checker"]  # each subject's training renders
    class_row = Evaluation.load_images(out / "experiments" / "base-checker" / "evaluation.npz").rows["class"]
    assert class_row[0] == ["a square"] * 2 and records["lora_b"]["sample_rows"][-2] == "class prompt: base"
    assert records["lora_b"]["prior_drift"] is not None
    report = (out / "report.md").read_text()
    assert "| lora_b | checker | lora |" in report and "subjects bullseye, checker;" in report  # a subject column


def test_the_study_has_four_variants_per_concept_with_numbers(composed):
    out, records = composed
    study = records["lora_a"]["composition_study"]
    assert study["loras"] == ["lora_a", "lora_b"] and [c["subject"] for c in study["concepts"]] == ["bullseye", "checker"]
    for concept in study["concepts"]:
        assert list(concept["variants"]) == ["alone", "together", "concat", "svd"]
        assert all(isinstance(scores["subject_fidelity"], float) for scores in concept["variants"].values())
        assert concept["variants"]["alone"]["subject_fidelity"] == records[concept["experiment"]]["subject_fidelity"]
    report = (out / "report.md").read_text()
    assert "## Composition study: lora_a + lora_b" in report
    assert "| bullseye (lora_a) | subject fidelity |" in report and "| checker (lora_b) | subject fidelity |" in report
    assert "Composition study: lora_a + lora_b" in (out / "report.html").read_text()
    assert (out / "composition" / "lora_b.png").is_file()


def test_together_is_both_files_attached_and_concat_is_exact(composed):
    out, records = composed
    study = records["lora_a"]["composition_study"]
    files = {row["variant"] if row["variant"] != "alone" else row["file"]: row for row in study["files"]}
    both = tunelab.Generator(MODEL, lora=[records["lora_a"]["artifact"], records["lora_b"]["artifact"]])
    for concept in study["concepts"]:
        prompt, images = concept["prompt"], concept["images"]
        # `tunelab generate --lora A --lora B` at the evaluation's seeds: one image at a time (the study samples a
        # batch), so the same images up to float rounding: a level in a few pixels at most.
        generated = both(prompt, seeds=[1000, 1001], steps=EVALUATION["sample_steps"], guidance=5.0, sampler="dpm++_2m")
        difference = np.abs(np.stack([np.asarray(image) for image in generated]).astype(int) - np.stack(subject_images(images["together"])))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01
        together = subject_images(images["together"])
        alone = subject_images(images["alone"])
        assert not np.array_equal(np.stack(together), np.stack(alone))  # the other concept's LoRA changes its images
        concat = np.stack(subject_images(images["concat"])).astype(int)
        assert np.abs(concat - np.stack(together)).max() <= 1  # the exact sum, up to float rounding
    concat_file = read_lora_file(out / "composition" / "concat.safetensors").lora
    svd_file = read_lora_file(out / "composition" / "svd.safetensors").lora
    assert {module.rank for module in concat_file.values()} == {6} and files["concat"]["rank"] == 6  # 2 + 4 stacked
    assert {module.rank for module in svd_file.values()} <= {1, 2, 3, 4} and files["svd"]["rank"] == 4  # the larger rank
    assert files["svd"]["bytes"] < files["concat"]["bytes"]
    assert files["together"]["bytes"] == files["lora_a"]["bytes"] + files["lora_b"]["bytes"]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"composition": {"loras": ["lora_a", "lroa_b"]}}, "composition names no experiment: 'lroa_b' (did you mean 'lora_b'?)"),
        ({"composition": {"loras": ["lora_a"]}}, "'loras' names two different experiments"),
        ({"experiments": [LORA_A, {**LORA_B, "subject": "bullseye"}]}, "learn the same subject (bullseye)"),
        ({"experiments": [LORA_A, {**LORA_B, "technique": "hypernetwork", "rank": None}]}, "Hypernetwork artifacts are not LoRA files"),
        ({"experiments": [LORA_A, {**LORA_B, "algorithm": "loha"}]}, "LoHa files cannot be stacked"),
        ({"experiments": [LORA_A, {**LORA_B, "subject": None, "prompt": "a zwx square"}]}, "'prompt' belongs with a 'subject'"),
        ({"experiments": [LORA_A, {**LORA_B, "subject": "unicorn"}]}, "experiment 'lora_b': subject 'unicorn' is neither"),
        ({"experiments": [LORA_A, {**LORA_B, "name": "base-checker"}], "composition": None}, "'base-checker' is the name of a base"),
        ({"composition": ["lora_a", "lora_b"]}, "'composition' must be a mapping"),
    ],
)
def test_bad_composition_or_subject_is_one_line(tmp_path, capsys, changes, message):
    """A None in `changes` leaves that key out."""
    config = write_config(tmp_path / "c.yaml", **changes)
    data = yaml.safe_load(config.read_text())
    data["experiments"] = [{key: value for key, value in entry.items() if value is not None} for entry in data["experiments"]]
    config.write_text(yaml.safe_dump({key: value for key, value in data.items() if value is not None}))
    err = one_line_error(capsys, run_cli("compare", config, "--out", tmp_path / "out"))
    assert message in err
    assert not (tmp_path / "out").exists()


def test_with_clip_and_dino_each_concept_has_a_row_per_embedding_metric():
    """A study measured with clip/dino (constructed here: the measuring is the experiments' own evaluation)."""
    scores = {"clip_i": 0.71, "dino": 0.42}
    concept = {"experiment": "dog", "subject": "photos/dog", "prompt": "a photo of sks dog", "base": {"clip_i": 0.5},
               "variants": {variant: scores for variant in ("alone", "together", "concat", "svd")}, "grid": None}
    study = {"loras": ["dog", "cat"], "concepts": [concept],
             "files": [{"variant": "svd", "file": "svd.safetensors", "rank": 4, "bytes": 1000}]}
    report = markdown([{"name": "dog", "technique": "lora", "composition_study": study}], "t", [])
    assert "| dog (dog) | CLIP-I | 0.500 | 0.710 | 0.710 | 0.710 | 0.710 |" in report
    assert "| dog (dog) | DINO | n/a | 0.420 | 0.420 | 0.420 | 0.420 |" in report
    assert "| svd | svd.safetensors | 4 | 1,000 |" in report


def test_a_subject_only_evaluation_is_the_full_one_s_subject_row():
    """The study measures each variant on the subject prompt alone: the same images and score as the full evaluation."""
    def pipeline(prompt, generator, num_inference_steps, guidance_scale, output_type):  # a colour from seed and prompt
        images = [np.full((32, 32, 3), [200, g.initial_seed() % 256, 7 * len(p)], np.float32) / 255 for p, g in zip(prompt, generator)]
        return SimpleNamespace(images=np.stack(images))  # (b, H, W, 3)

    full = evaluate_subject(pipeline, SUBJECTS["checker"], "zwx", images_per_prompt=3, steps=1)
    alone = evaluate_subject(pipeline, SUBJECTS["checker"], "zwx", images_per_prompt=3, steps=1, subject_only=True)
    assert list(alone.rows) == ["subject"] and list(alone.scores) == ["subject_fidelity"] and len(full.rows) == 3
    assert alone.scores["subject_fidelity"] == full.scores["subject_fidelity"]
    assert np.array_equal(np.stack(alone.rows["subject"][1]), np.stack(full.rows["subject"][1]))
    assert np.array_equal(np.stack(alone.references["subject"]), np.stack(full.references["subject"]))
