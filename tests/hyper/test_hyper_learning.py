"""Learning test (issue 22), small sample: the shipped predictor's LoRAs draw held-out subjects the base cannot.

docs/compare.md has the full table (8 subjects, 16 images each, against the demo's LoRA, generation-6 base):
predicted 0.394 against the base's 0.027 and the LoRA's 0.631. Here 4 held-out subjects, 4 images each: well
above the base, each prediction under a second.
"""

from __future__ import annotations

import numpy as np
import pytest

from tunelab.hyper.personalize import predictor_path
from tunelab.hyper.scoring import score_predictions
from tunelab.hyper.subjects import held_out_subjects
from tunelab.lora.weight_predictor import load_predictor
from tunelab.models.loading import load_pipeline


@pytest.fixture(scope="module")
def rows():
    pipeline = load_pipeline("toyworld")
    pipeline.set_progress_bar_config(disable=True)
    predictor, basis, _ = load_predictor(predictor_path("toyworld"))
    return score_predictions(pipeline, predictor, basis, held_out_subjects()[:4], seeds=[1000, 1001, 1002, 1003])


def test_predicted_loras_draw_held_out_subjects_far_better_than_the_base(rows):
    base, predicted = np.mean([row["base"] for row in rows]), np.mean([row["predicted"] for row in rows])
    assert predicted > max(3 * base, base + 0.05), rows
    assert all(row["predict_seconds"] < 1.0 for row in rows)
