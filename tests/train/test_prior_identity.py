"""Class images are cached per base model: a preset of shipped weights is named by those weights, so a new
toyworld base installed under the same preset name never trains against the old base's class images."""

from tunelab.models import presets
from tunelab.training.prior import model_identity


def test_a_seeded_preset_is_named_by_its_seed():
    assert model_identity("tiny-sd", 0) != model_identity("tiny-sd", 1)


def test_a_shipped_preset_is_named_by_its_weights(tmp_path, monkeypatch):
    folder = tmp_path / "base"
    (folder / "unet").mkdir(parents=True)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"first base")
    monkeypatch.setitem(presets.PRESET_WEIGHTS, "toyworld", folder)
    first = model_identity("toyworld", 0)
    assert model_identity("toyworld", 7) == first  # the seed does not change pretrained weights
    weights.write_bytes(b"second base")
    assert model_identity("toyworld", 0) != first


def test_a_seeded_preset_is_named_by_what_its_builders_build(monkeypatch):
    first = model_identity("tiny-sd", 0)
    monkeypatch.setattr(presets, "TINY_BUILD", presets.TINY_BUILD + 1)
    assert model_identity("tiny-sd", 0) != first
