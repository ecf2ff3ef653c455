"""Hostile option values and config files (issue 16): one clear line and exit 2, fast, never a traceback."""

from __future__ import annotations

import time

import pytest

from helpers import one_line_error, refuse_model_loading, run_cli
from tunelab.config import parse_weighted_path, read_config_file
from tunelab.errors import TunelabError

TRAIN = ["train", "lora", "--model", "tiny-sd", "--prompt", "a photo of sks toy", "--log-with", "none", "--steps", "1"]


@pytest.fixture
def no_model(monkeypatch):
    refuse_model_loading(monkeypatch)


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 "lol"']
    lines += [f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]" for level in range(1, levels)]
    return "\n".join(lines) + f"\nprompt: *a{levels - 1}\n"


def test_yaml_aliases_that_expand_without_bound_are_refused_fast(tmp_path, subject_images, capsys, no_model):
    config = tmp_path / "laughs.yaml"
    config.write_text(billion_laughs())  # 9**8 = 43 million strings once expanded
    started = time.perf_counter()
    err = one_line_error(capsys, run_cli(*TRAIN, "--images", subject_images, "--out", tmp_path / "o", "--config", config))
    assert time.perf_counter() - started < 5
    assert "laughs.yaml: the file expands to over 100000 values" in err and len(err) < 300


def test_yaml_aliases_of_ordinary_size_still_work(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text('shared: &p "a photo of sks toy"\nprompt: *p\nsample_prompts: [*p, *p]\n')
    assert read_config_file(config)["sample_prompts"] == ["a photo of sks toy"] * 2


def test_a_json_config_is_read_as_json(tmp_path):
    config = tmp_path / "run.json"
    config.write_text('{"prompt": "a photo of sks toy \\ud83d\\ude00"}')  # JSON's escape of one emoji
    assert read_config_file(config)["prompt"] == "a photo of sks toy \N{GRINNING FACE}"


def test_half_a_surrogate_pair_is_one_line(tmp_path, subject_images, capsys, no_model):
    config = tmp_path / "run.yaml"
    config.write_text('prompt: "a photo \\ud83d\\ude00"\n')  # YAML reads these as two lone surrogates
    err = one_line_error(capsys, run_cli(*TRAIN, "--images", subject_images, "--out", tmp_path / "o", "--config", config))
    assert "option 'prompt' is not valid text (invalid UTF-8, or half of a surrogate pair)" in err


def test_invalid_utf8_in_an_argument_is_one_line(tmp_path, subject_images, capsys, no_model):
    prompt = b"a photo of \xff\xfe".decode("utf-8", "surrogateescape")  # how Python passes such an argv entry on
    err = one_line_error(capsys, run_cli("train", "lora", "--model", "tiny-sd", "--prompt", prompt, "--images",
                                         subject_images, "--out", tmp_path / "o", "--steps", "1"))
    assert "option 'prompt' is not valid text" in err
    err = one_line_error(capsys, run_cli("generate", "--model", "tiny-sd", "--prompt", prompt, "--out", tmp_path / "x.png"))
    assert "option 'prompt' is not valid text" in err


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path, subject_images, capsys, no_model):
    config = tmp_path / "run.yaml"
    config.write_bytes(b"prompt: caf\xe9\n")  # Latin-1
    err = one_line_error(capsys, run_cli(*TRAIN, "--images", subject_images, "--out", tmp_path / "o", "--config", config))
    assert "cannot parse config file" in err


@pytest.mark.parametrize("spec", ["x.safetensors:nan", "x.safetensors:inf", "x.safetensors:-inf"])
def test_a_weight_that_is_not_finite_is_refused(spec):
    with pytest.raises(TunelabError, match="is not a finite number"):
        parse_weighted_path(spec)


def test_a_float_option_that_is_not_finite_is_refused_in_a_file_too(tmp_path, subject_images, capsys, no_model):
    config = tmp_path / "run.json"
    config.write_text('{"learning_rate": NaN}')
    err = one_line_error(capsys, run_cli(*TRAIN, "--images", subject_images, "--out", tmp_path / "o", "--config", config))
    assert "option 'learning_rate' must be a finite number, got nan" in err
