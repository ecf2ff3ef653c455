"""LEARNING TEST (slow, about 40 s): a mask over the object learns the object and leaves the background alone.

The bullseye's training renders get a busy background (seeded colour noise where the plain background was) and a
mask of the object that the renderer drew. A LoRA trained with `--masks` must learn the subject at least as well
as one trained on the same images without them, while the backgrounds it draws for the class prompt stay as
flat as the base's: the unmasked one learns the noise too.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tunelab import api
from tunelab.evaluate.metrics import subject_fidelity
from tunelab.evaluate.sampling import sample_images
from tunelab.evaluate.scene_reading import background_flatness, read
from tunelab.models.loading import load_pipeline
from tunelab.toyworld.subjects import SUBJECTS, TRAINING_RENDERS
from tunelab.toyworld.world import PALETTE, render

SUBJECT = SUBJECTS["bullseye"]
SEEDS = list(range(8))
TRAINING = {"steps": 100, "rank": 8, "targets": ["attention", "feedforward"], "caption_dropout": 0.2,
            "learning_rate": 2.0e-3, "min_snr_gamma": 5.0, "batch_size": 4, "seed": 0}  # the demo LoRA's rate and weights


@pytest.fixture(scope="module")
def busy_subject(tmp_path_factory):
    """(images folder, masks folder): the subject on colour noise, and where the object is."""
    root = tmp_path_factory.mktemp("busy")
    images, masks = root / "images", root / "masks"
    images.mkdir(), masks.mkdir()
    rng = np.random.default_rng(0)
    for index, scene in enumerate(SUBJECT.scenes(TRAINING_RENDERS, seed=0)):
        pixels = render(scene)  # (H, W, 3)
        background = (pixels == np.array(PALETTE[scene.background], dtype=np.uint8)).all(axis=-1)  # (H, W)
        noise = rng.integers(0, 256, pixels.shape, dtype=np.uint8)
        busy = np.where(background[..., None], noise, pixels)
        Image.fromarray(busy).save(images / f"{SUBJECT.name}_{index}.png")
        (images / f"{SUBJECT.name}_{index}.txt").write_text(SUBJECT.prompt + "\n")
        Image.fromarray(np.where(background, 0, 255).astype(np.uint8)).save(masks / f"{SUBJECT.name}_{index}.png")
    return images, masks


@pytest.fixture(scope="module")
def base():
    pipeline = load_pipeline("toyworld")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def scores(pipeline) -> tuple[float, float]:
    """(subject fidelity of the subject prompt, mean background flatness of the class prompt) on fixed seeds."""
    subject_images = sample_images(pipeline, [SUBJECT.prompt] * len(SEEDS), SEEDS)
    class_images = sample_images(pipeline, [SUBJECT.class_prompt] * len(SEEDS), SEEDS)
    return subject_fidelity(subject_images, SUBJECT), float(np.mean([background_flatness(read(i)) for i in class_images]))


def tuned_scores(base, artifact) -> tuple[float, float]:
    base.load_lora_weights(str(artifact))
    try:
        return scores(base)
    finally:
        base.unload_lora_weights()


@pytest.fixture(scope="module")
def measured(busy_subject, base, tmp_path_factory):
    """(subject fidelity, class-prompt background flatness) of the base, the masked LoRA and the unmasked one."""
    images, masks = busy_subject
    out = tmp_path_factory.mktemp("masked-runs")
    masked = api.train("lora", model="toyworld", images=images, out=out / "masked", masks=str(masks), **TRAINING)
    unmasked = api.train("lora", model="toyworld", images=images, out=out / "unmasked", **TRAINING)
    found = {"base": scores(base), "masked": tuned_scores(base, masked.artifact), "unmasked": tuned_scores(base, unmasked.artifact)}
    print("; ".join(f"{name} {fidelity:.3f} / {flatness:.3f}" for name, (fidelity, flatness) in found.items()))
    return found


def test_a_masked_lora_learns_the_object_as_well(measured):
    (base_fidelity, _), (masked_fidelity, _), (unmasked_fidelity, _) = measured.values()
    assert masked_fidelity > base_fidelity and masked_fidelity >= unmasked_fidelity - 0.05  # learned, at least as well


# Strict: passes the day masked training keeps the class prompt's backgrounds on this base.
@pytest.mark.xfail(strict=True, reason="on the v-prediction, zero-terminal-SNR bases (generations 3-6) a masked LoRA without "
                   "prior preservation leaves the class prompt's backgrounds unanchored: generation 6, flatness 0.50, unmasked "
                   "1.00, base 1.00 (generation 3: 0.50 / 0.75 / 1.00); the generation-1 base kept them flat")
def test_a_masked_lora_keeps_the_class_backgrounds_flat(measured):
    (_, base_flatness), (_, masked_flatness), (_, unmasked_flatness) = measured.values()
    masked_drift, unmasked_drift = base_flatness - masked_flatness, base_flatness - unmasked_flatness
    assert masked_drift < unmasked_drift - 0.05, (masked_drift, unmasked_drift)  # the noise reached the class prompt without masks
