"""Strict configuration: unknown keys and wrong types are named, with the nearest valid key."""

from __future__ import annotations

import pytest
import yaml

from tunelab.config import read_config_file, resolve, to_dict, write_resolved
from tunelab.errors import TunelabError
from tunelab.methods.lora import LoraOptions
from tunelab.training.options import TrainOptions

REQUIRED = {"model": "tiny-sd", "images": "imgs", "out": "out"}


def test_precedence_default_then_file_then_command_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning-rate: 0.002\nsteps: 30\nrank: 8\n")
    options, lora = resolve([TrainOptions, LoraOptions], {**REQUIRED, "steps": 40}, config)
    assert options.learning_rate == 0.002  # from the file
    assert options.steps == 40  # command line wins over the file
    assert options.batch_size == 1  # default
    assert lora.rank == 8


def test_toml_file_and_lists(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('model = "tiny-sd"\nimages = "x"\nout = "y"\ntargets = ["attention", "conv"]\nalpha = 2\n')
    options, lora = resolve([TrainOptions, LoraOptions], {}, config)
    assert options.model == "tiny-sd"
    assert lora.targets == ["attention", "conv"]
    assert lora.alpha == 2.0 and isinstance(lora.alpha, float)


def test_unknown_key_names_it_and_suggests(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rat: 0.1\n")
    with pytest.raises(TunelabError, match=r"unknown option 'learning_rat' .*did you mean 'learning_rate'"):
        resolve([TrainOptions, LoraOptions], REQUIRED, config)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("steps", "many", "option 'steps' must be an integer"),
        ("steps", 1.5, "option 'steps' must be an integer"),
        ("learning_rate", "fast", "option 'learning_rate' must be a number"),
        ("gradient_checkpointing", "yes", "must be true or false"),
        ("lr_scheduler", "cosin", "did you mean 'cosine'"),
        ("targets", ["attention", "mlp"], "'mlp' is not one of attention, feedforward, conv"),
    ],
)
def test_wrong_types_are_errors(tmp_path, key, value, message):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({key: value}))
    with pytest.raises(TunelabError, match=message):
        resolve([TrainOptions, LoraOptions], REQUIRED, config)


def test_missing_required_option():
    with pytest.raises(TunelabError, match="missing required option --images"):
        resolve([TrainOptions], {"model": "tiny-sd", "out": "o"})


def test_unparseable_and_missing_files(tmp_path):
    broken = tmp_path / "bad.yaml"
    broken.write_text("steps: [1, 2\n")
    with pytest.raises(TunelabError, match="cannot parse config file"):
        read_config_file(broken)
    with pytest.raises(TunelabError, match="config file not found"):
        read_config_file(tmp_path / "absent.yaml")
    other = tmp_path / "run.ini"
    other.write_text("x=1")
    with pytest.raises(TunelabError, match="must be .yaml"):
        read_config_file(other)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(TunelabError, match="mapping"):
        read_config_file(listing)


def test_resolved_configuration_round_trips_as_a_config_file(tmp_path):
    options, lora = resolve([TrainOptions, LoraOptions], {**REQUIRED, "rank": 16, "targets": ["conv"]})
    path = tmp_path / "config.yaml"
    write_resolved(path, to_dict(options, lora))
    again = resolve([TrainOptions, LoraOptions], {}, path)
    assert again == [options, lora]
