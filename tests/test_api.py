"""The Python API: the same results as the command line, progress and stop, strict options, docs/api.md runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli, write_subject_images
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_embedders import save_tiny_clip, save_tiny_dinov2

import tunelab
import tunelab.lora

DOCS = Path(__file__).resolve().parent.parent / "docs" / "api.md"
LORA = {"prompt": "a photo of sks toy", "steps": 6, "learning_rate": 1e-3, "rank": 4, "seed": 3, "log_with": "none"}


def test_a_lora_trained_through_the_api_is_byte_identical_to_the_commands(subject_images, tmp_path):
    result = tunelab.train("lora", model="tiny-sd", images=subject_images, out=tmp_path / "api", **LORA)
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in LORA.items()]
    assert run_cli("train", "lora", "--model", "tiny-sd", "--images", subject_images, "--out", tmp_path / "cli", *flags) == 0
    assert result.artifact == tmp_path / "api" / "lora.safetensors" and result.step == 6
    from_api, from_cli = load_file(result.artifact), load_file(tmp_path / "cli" / "lora.safetensors")
    assert set(from_api) == set(from_cli) and all(torch.equal(from_api[key], from_cli[key]) for key in from_api)
    assert result.config["rank"] == 4 and result.config["technique"] == "lora"


def test_generate_returns_the_pixels_the_command_writes(tmp_path):
    options = {"prompt": "a (photo:1.2) of sks toy", "seeds": [4, 9], "steps": 4, "negative_prompt": "blurry"}
    images = tunelab.generate(model="tiny-sd", out=tmp_path / "api", **options)
    assert run_cli("generate", "--model", "tiny-sd", "--prompt", options["prompt"], "--seeds", "4", "9", "--steps", "4",
                   "--negative-prompt", "blurry", "--out", tmp_path / "cli") == 0
    written = sorted((tmp_path / "cli").glob("*.png"))
    assert len(images) == len(written) == 2
    for image, path in zip(images, written):
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(path)))
        assert image.info["parameters"] == Image.open(path).text["parameters"]
    assert sorted(path.name for path in (tmp_path / "api").glob("*.png")) == [path.name for path in written]


def test_a_generator_loads_once_and_gives_the_images_generate_gives(trained_lora):
    generator = tunelab.Generator("tiny-sd", lora=[f"{trained_lora}:0.7"])
    once = tunelab.generate(model="tiny-sd", prompt="a photo of sks toy", lora=[f"{trained_lora}:0.7"], seeds=[2], steps=4)
    again = generator("a photo of sks toy", seeds=[2], steps=4)
    assert np.array_equal(np.asarray(once[0]), np.asarray(again[0]))
    with pytest.raises(tunelab.TunelabError, match="decide what is loaded"):
        generator("a photo of sks toy", lora=["other.safetensors"])
    generator.close()


def test_lora_tools_through_the_api_write_what_the_command_writes(trained_lora, tmp_path):
    from_api = tunelab.lora.resize(trained_lora, tmp_path / "api.safetensors", rank=2)
    assert run_cli("lora", "resize", trained_lora, "--rank", "2", "--out", tmp_path / "cli.safetensors") == 0
    a, b = load_file(from_api), load_file(tmp_path / "cli.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[key], b[key]) for key in a)
    with safe_open(str(from_api), "pt") as api_file, safe_open(str(tmp_path / "cli.safetensors"), "pt") as cli_file:
        differing = {key for key in api_file.metadata() if api_file.metadata()[key] != cli_file.metadata().get(key)}
    assert differing == {"tunelab_resize"}  # the record of the call, which names its own output file
    assert tunelab.lora.info(from_api)["ranks"] == {"2": tunelab.lora.info(trained_lora)["module_count"]}


def test_on_progress_sees_every_step_and_a_stop_resumes_bit_identically(subject_images, tmp_path):
    seen = []

    def stop_at_3(progress):
        seen.append((progress.step, progress.total))
        assert progress.seconds_left >= 0 and np.isfinite(progress.loss)
        if progress.step == 3:
            progress.request_stop()

    stopped = tunelab.train("lora", model="tiny-sd", images=subject_images, out=tmp_path / "run", on_progress=stop_at_3, **LORA)
    assert seen == [(1, 6), (2, 6), (3, 6)]
    assert stopped.stopped and stopped.artifact is None and stopped.checkpoint.name == "step-0000003"
    resumed = tunelab.train("lora", model="tiny-sd", images=subject_images, out=tmp_path / "run", resume="latest", **LORA)
    straight = tunelab.train("lora", model="tiny-sd", images=subject_images, out=tmp_path / "straight", **LORA)
    a, b = load_file(resumed.artifact), load_file(straight.artifact)
    assert resumed.step == 6 and all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("call, nearest", [
    (lambda tmp: tunelab.lora.resize("x.safetensors", tmp / "y.safetensors", rnak=2), "rank"),
    (lambda tmp: tunelab.train("lora", model="tiny-sd", images="x", out=tmp, learing_rate=1e-4), "learning_rate"),
    (lambda tmp: tunelab.train("lroa", model="tiny-sd", images="x", out=tmp), "lora"),
    (lambda tmp: tunelab.generate(model="tiny-sd", prompt="x", sampeler="euler"), "sampler"),
])
def test_a_misspelt_option_names_the_nearest_valid_one(call, nearest, tmp_path):
    with pytest.raises(tunelab.TunelabError, match=f"did you mean '{nearest}'"):
        call(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_tunelab_loads_no_heavy_library():
    """`import tunelab` stays fast because torch and diffusers load with the first call (timed in benchmarks/)."""
    code = "import sys, tunelab; print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def python_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)


def test_every_example_in_docs_api_runs(tmp_path, monkeypatch):
    examples = python_examples()
    assert len(examples) >= 5
    write_subject_images(tmp_path / "photos")
    save_tiny_clip(tmp_path / "models" / "clip")
    save_tiny_dinov2(tmp_path / "models" / "dino")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for example in examples:
        exec(compile(example, str(DOCS), "exec"), namespace)
    assert (tmp_path / "runs" / "toy" / "lora.safetensors").is_file() and (tmp_path / "toy-2.png").is_file()
    assert (tmp_path / "comparison" / "report.html").is_file()
    assert set(json.loads((tmp_path / "scores.json").read_text())) >= {"clip_i", "clip_t", "dino", "details"}
    assert (tmp_path / "runs" / "merged" / "model_index.json").is_file()
    assert (tmp_path / "runs" / "toy" / "rank2-peft.safetensors").is_file()
    assert os.path.isfile(tmp_path / "runs" / "stopped" / "lora.safetensors")
