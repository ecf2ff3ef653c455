"""The shipped base follows held-out captions: a small sample of what its model card reports on 480 images."""

import json
from pathlib import Path

import pytest

import tunelab.toyworld
from tunelab.evaluate.base_scores import measure_base
from tunelab.models.loading import load_pipeline
from tunelab.toyworld.world import ATTRIBUTES, WORLD

BASE = Path(tunelab.toyworld.__file__).parent / "base"
SAMPLE = 24  # four images of each held-out combination


@pytest.fixture(scope="module")
def scores():
    pipeline = load_pipeline(BASE)
    pipeline.set_progress_bar_config(disable=True)
    return measure_base(pipeline, count=SAMPLE, seed=0)


# Strict: each passes the day a base that draws it ships.
SHORT_OF_THE_BAR = {
    1: {"position": "the generation-1 base ignores position words half the time (card: 0.55; issue 15)"},
    3: {"shape": "the generation-3 base draws many small objects as blobs (card: 0.78 on 480 images; issue 15)",
        "position": "the generation-3 base follows position words just under the bar (card: 0.898; this sample 0.875)"},
    4: {"shape": "the generation-4 base draws some small objects as blobs (card: 0.84 on 480 images, this sample 0.875; issue 15)",
        "position": "the generation-4 base follows position words just under the bar (card: 0.896; this sample 0.875)"},
}


def marks(attribute):
    reason = SHORT_OF_THE_BAR.get(WORLD.generation, {}).get(attribute)
    return pytest.mark.xfail(strict=True, reason=reason) if reason else ()


@pytest.mark.parametrize("attribute", [pytest.param(a, marks=marks(a)) for a in ATTRIBUTES])
def test_the_shipped_base_draws_what_held_out_captions_ask(scores, attribute):
    assert scores[f"{attribute}_accuracy"] >= 0.9


def test_the_model_card_reports_the_measured_scores():
    record = json.loads((BASE / "pretraining.json").read_text())
    card = (BASE / "README.md").read_text()
    row = " | ".join(f"{record['scores'][f'{a}_accuracy']:.2f}" for a in ATTRIBUTES)
    assert f"| {row} |" in card and record["machine"] in card
