"""`tunelab compare` from the command line: a small comparison end to end, and the demo's own checks."""

import json

import yaml

from helpers import run_cli
from tunelab.comparison.demo_settings import demo_config
from tunelab.comparison.runner import available_cores


def test_compare_writes_its_three_reports_and_prices_the_run(tmp_path, capsys):
    config = {"model": "toyworld", "subject": "checker", "images_per_prompt": 2, "sample_steps": 4,
              "metrics": ["subject_fidelity", "diversity"],
              "experiments": [{"name": "quick-lora", "technique": "lora", "steps": 2, "rank": 2}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert run_cli("compare", tmp_path / "c.yaml", "--out", tmp_path / "out", "--usd-per-hour", "3.6", "--parallel", "2") == 0
    assert f"wrote {tmp_path / 'out' / 'report.html'}" in capsys.readouterr().out
    records = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["name"] for r in records] == ["base", "quick-lora"]
    # --parallel 2: the two ran side by side, each on half the cores (not each on all of them).
    runs = [json.loads((tmp_path / "out" / "experiments" / name / "result.json").read_text()) for name in ("base", "quick-lora")]
    assert max(run["started_at"] for run in runs) < min(run["ended_at"] for run in runs)
    assert [run["torch_threads"] for run in runs] == [max(1, available_cores() // 2)] * 2
    lora = records[1]
    assert lora["usd"] == round(lora["train_seconds"] / 1000, 6)  # 3.6 USD per hour = 0.001 per second
    assert lora["prompt_fidelity"] is None and lora["prior_drift"] is None  # not asked for
    assert lora["subject_fidelity"] is not None and (tmp_path / "out" / "experiments" / "quick-lora" / "lora.safetensors").is_file()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| quick-lora | lora |" in report and "Machine: " in report and "up to 2 experiments at once" in report
    # Its sample grid: references and the base's class images over its own, one column per evaluation seed.
    assert lora["sample_seeds"] == [1000, 1001] and lora["sample_rows"][-2:] == ["class prompt: base", "class prompt: quick-lora"]
    assert lora["sample_rows"][0] == "subject prompt: reference" and len(lora["sample_rows"]) == 6
    assert (tmp_path / "out" / "experiments" / "quick-lora" / "samples.png").is_file() and lora["samples"].endswith("samples.png")


def test_demo_refuses_a_bad_scale_or_subject(tmp_path, capsys):
    assert run_cli("demo", "--out", tmp_path / "d", "--scale", "0") == 2
    assert "--scale must be in (0, 10]" in capsys.readouterr().err
    assert run_cli("demo", "--out", tmp_path / "d", "--subject", "unicorn") == 2
    assert "unknown toyworld subject 'unicorn'" in capsys.readouterr().err
    assert run_cli("demo", "--out", tmp_path / "d", "--parallel", "0") == 2
    assert "--parallel must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_compare_refuses_an_out_that_is_a_file_in_one_line(tmp_path, capsys):
    config = {"model": "toyworld", "subject": "checker", "experiments": [{"name": "quick-lora", "technique": "lora", "steps": 2}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "afile").write_text("x")
    assert run_cli("compare", tmp_path / "c.yaml", "--out", tmp_path / "afile") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and "afile is a file; give a folder" in err


def test_the_demo_evaluates_on_128_images_per_prompt_and_a_quicker_look_on_fewer():
    assert demo_config("bullseye").options.images_per_prompt == 128  # scores within 0.03 between seed sets (docs)
    assert demo_config("bullseye", scale=0.25).options.images_per_prompt == 32
    assert demo_config("bullseye", scale=0.01).options.images_per_prompt == 8  # never fewer than the grid's columns
    assert demo_config("bullseye", scale=3).options.images_per_prompt == 128
