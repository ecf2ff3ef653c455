"""tunelab.check_train (src/tunelab/api.py): the checks of tunelab.train without training, for the UI."""

from __future__ import annotations

import pytest

from tunelab import api
from tunelab.errors import TunelabError


def test_it_refuses_what_train_refuses_with_the_same_line(subject_images, tmp_path):
    options = {"model": "tiny-sd", "images": subject_images, "out": tmp_path / "run", "prompt": "a photo", "rank": 4}
    for bad in ({"steps": 0}, {"learing_rate": 1e-4}, {"flow_shift": 3.0}):
        with pytest.raises(TunelabError) as checked:
            api.check_train("lora", **options, **bad)
        with pytest.raises(TunelabError) as trained:
            api.train("lora", **options, **bad)
        assert str(checked.value) == str(trained.value)


def test_it_returns_the_resolved_configuration_and_writes_nothing(subject_images, tmp_path):
    resolved = api.check_train("lora", model="tiny-sd", images=subject_images, out=tmp_path / "run", prompt="a photo", steps=3)
    assert resolved["steps"] == 3 and resolved["rank"] == 4 and resolved["technique"] == "lora"
    assert not (tmp_path / "run").exists()
