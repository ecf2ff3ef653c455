"""Helpers shared by tests: run the CLI in-process, draw a small subject."""

from __future__ import annotations

from pathlib import Path


def write_subject_images(folder: Path, count: int = 4, size: int = 40) -> Path:
    """A small 'subject': a red disc on varied backgrounds, deterministic."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = Image.new("RGB", (size, size), (30 * index, 90, 200 - 20 * index))
        ImageDraw.Draw(image).ellipse((6 + index, 8, 26 + index, 28), fill=(230, 20, 20))
        image.save(folder / f"subject_{index}.png")
    return folder


def run_cli(*args: str) -> int:
    from tunelab.cli import main

    return main([str(a) for a in args])


def one_line_error(capsys, code) -> str:
    """The stderr of a command that must have failed on bad input: exit 2, one line, no traceback."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def refuse_model_loading(monkeypatch) -> None:
    """Any training that gets past its checks fails at loading: a refusal that must come first is seen to."""
    import tunelab.training.loop  # deferred: as the other helpers, so importing helpers stays light

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded: the check came too late")
    monkeypatch.setattr(tunelab.training.loop, "load_pipeline", refuse)


def write_untrained_predictor(path: Path, preset: str = "tiny-sd", rank: int = 4) -> Path:
    """A valid weight-predictor file for a tiny preset, untrained: its fixed bases fit the preset's attention layers
    (as `tunelab hyper pretrain` makes them) and its last layer is random instead of zero, so the LoRAs it predicts
    differ from image to image and change the model. Made in a fraction of a second, for tests of the technique."""
    import torch  # deferred: as the other helpers, so importing helpers stays light

    from tunelab.hyper.batches import basis_for
    from tunelab.lora.weight_predictor import PredictorShape, WeightPredictor, save_predictor
    from tunelab.models.family import family_for
    from tunelab.models.presets import build_preset

    family = family_for(build_preset(preset))
    basis = basis_for(family, rank, seed=0)
    torch.manual_seed(0)
    predictor = WeightPredictor(PredictorShape(basis.layers, rank, channels=4, hidden=16))
    torch.nn.init.normal_(predictor.decoder[-1].weight, std=0.5)
    pipeline = family.pipeline
    facts = {"token": "sks", "resolution": pipeline.unet.config.sample_size * pipeline.vae_scale_factor,
             "base_model": preset, "base_model_version": family.base_model_version, "targets": ["attention"]}
    return save_predictor(path, predictor, basis, facts, dtype=torch.float32)
