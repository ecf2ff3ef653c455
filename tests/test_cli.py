"""Bad input gets one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import run_cli
from tunelab.models.presets import PRESETS

TRAIN = ["train", "lora", "--prompt", "a photo of sks toy", "--steps", "2", "--log-with", "none"]


def assert_one_line_error(capsys, code, fragment):
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert fragment in err, err


def test_missing_images_folder(tmp_path, capsys):
    code = run_cli(*TRAIN, "--model", "tiny-sd", "--images", tmp_path / "nope", "--out", tmp_path / "o")
    assert_one_line_error(capsys, code, "nope")


def test_empty_images_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = run_cli(*TRAIN, "--model", "tiny-sd", "--images", tmp_path / "empty", "--out", tmp_path / "o")
    assert_one_line_error(capsys, code, "no images")


def test_unknown_preset_or_missing_model(tmp_path, subject_images, capsys):
    code = run_cli(*TRAIN, "--model", "tiny-sdx", "--images", subject_images, "--out", tmp_path / "o")
    assert_one_line_error(capsys, code, f"model not found: 'tiny-sdx' is not a preset ({', '.join(sorted(PRESETS))})")
    (tmp_path / "folder").mkdir()
    code = run_cli(*TRAIN, "--model", tmp_path / "folder", "--images", subject_images, "--out", tmp_path / "o")
    assert_one_line_error(capsys, code, "not a diffusers model (no model_index.json)")


def test_unknown_sampler(tmp_path, capsys):
    code = run_cli("generate", "--model", "tiny-sd", "--prompt", "x", "--out", tmp_path / "a.png", "--sampler", "eulr")
    assert_one_line_error(capsys, code, "unknown sampler 'eulr' (did you mean 'euler'?)")


def test_bad_config_file(tmp_path, subject_images, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("rnak: 8\n")
    code = run_cli(*TRAIN, "--model", "tiny-sd", "--images", subject_images, "--out", tmp_path / "o", "--config", config)
    assert_one_line_error(capsys, code, "unknown option 'rnak' in")


def test_missing_lora_file(tmp_path, capsys):
    code = run_cli("generate", "--model", "tiny-sd", "--prompt", "x", "--out", tmp_path / "a.png", "--lora", tmp_path / "x.safetensors:0.5")
    assert_one_line_error(capsys, code, "LoRA file not found")


def test_unknown_flag_suggests_the_right_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("generate", "--model", "tiny-sd", "--prompt", "x", "--out", "a.png", "--sampeler", "euler")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean --sampler?" in err


def test_installed_entry_point_prints_one_line(tmp_path):
    """The real console script, as a user runs it: exit status and stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "train", "lora", "--model", "tiny-sd", "--images", str(tmp_path / "none"),
         "--out", str(tmp_path / "o"), "--prompt", "p"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("tunelab: error:") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`tunelab lora info FILE | head -1` with more output than the pipe holds: no BrokenPipeError, no "internal
    error", the exit status of a command the pipe ended (128 + SIGPIPE)."""
    work = "lambda: [print('a line of a long summary ' * 4) for _ in range(200000)]"
    command = f"{sys.executable} -c \"import sys; from tunelab.process import run_guarded; sys.exit(run_guarded({work}))\" | head -1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr == "" and result.returncode == 141


def test_debug_shows_the_traceback(tmp_path):
    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError):
        run_cli("--debug", "generate", "--model", "nothing-here", "--prompt", "x", "--out", tmp_path / "a.png")


def test_a_lora_for_another_architecture_is_one_clear_line(tmp_path, capsys):
    import torch

    from tunelab.formats.lora_io import write_lora
    from tunelab.formats.lora_set import LoraModule

    to_q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    for name, module_key, width in [("wide", to_q, 320), ("elsewhere", to_q.replace("down_blocks.0", "down_blocks.3"), 16)]:
        path = tmp_path / f"{name}.safetensors"
        write_lora({module_key: LoraModule(torch.randn(4, width), torch.randn(width, 4), 4.0)}, path, "kohya", {})
        code = run_cli("generate", "--model", "tiny-sd", "--prompt", "x", "--out", tmp_path / "a.png", "--lora", path)
        assert_one_line_error(capsys, code, "does not fit this model (a LoRA for another architecture?)")
