"""The report's sample grids: each technique's images under what they should look like, seed for seed.

A fake pipeline draws flat images whose colour says which seed (and which model) made them, so a
cell of the written PNG tells whether it holds the right image in the right column.
"""

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tunelab.comparison.report_images import GRID_SEEDS, comparison_rows, layout, scale_for, write_sample_grids
from tunelab.comparison.worker import evaluate_experiment
from tunelab.evaluate.metrics import subject_fidelity
from tunelab.evaluate.protocol import Evaluation, evaluate_subject, sample_prompt
from tunelab.evaluate.scene_reading import read
from tunelab.toyworld.subjects import SUBJECTS
from tunelab.toyworld.world import WORLDS

SEEDS = 3
FIRST_SEED = 40


class FlatPipeline:
    """Stands in for a diffusers pipeline: one flat image per (prompt, generator), its colour from the seed,
    the model (`shade`) and the prompt, so every image of a grid differs from every other."""

    def __init__(self, shade: int, side: int):
        self.shade, self.side = shade, side

    def __call__(self, prompt, generator, num_inference_steps, guidance_scale, output_type):
        images = [np.full((self.side, self.side, 3), [self.shade, g.initial_seed() % 256, len(p)], np.float32) / 255
                  for p, g in zip(prompt, generator)]
        return SimpleNamespace(images=np.stack(images))  # (b, H, W, 3) in [0, 1]


def flat(shade: int, seed: int, prompt: str, side: int) -> np.ndarray:
    return np.full((side, side, 3), [shade, seed % 256, len(prompt)], np.uint8)


def cells(png_path, rows) -> list[list[np.ndarray]]:
    """The images back out of a written grid, at their original size."""
    grid, picture = layout(rows), np.asarray(Image.open(png_path).convert("RGB"))
    factor = grid.cell // rows[0].images[0].shape[0]
    out = []
    for index, row in enumerate(rows):
        found = []
        for column in range(len(row.images)):
            y, x = grid.cell_origin(index, column)
            found.append(picture[y : y + grid.cell : factor, x : x + grid.cell : factor])
        out.append(found)
    return out


@pytest.fixture(scope="module", params=sorted(WORLDS))
def world(request):
    return WORLDS[request.param]


def test_references_are_the_subject_drawn_as_each_prompt_asks(world):
    subject = SUBJECTS["checker"]
    evaluation = evaluate_subject(FlatPipeline(10, world.resolution), subject, "zwx", images_per_prompt=8, seed=FIRST_SEED, steps=1)
    assert evaluation.seeds == list(range(FIRST_SEED, FIRST_SEED + 8))
    for row in ("subject", "prompts"):
        references = evaluation.references[row]
        assert len(references) == 8 and all(image.shape == (world.resolution, world.resolution, 3) for image in references)
        assert subject_fidelity(references, subject) >= 0.95  # renders of the subject itself
    plain = [read(image) for image in evaluation.references["subject"]]
    assert len({(r.background, r.position) for r in plain}) > 1  # a plain prompt: place and background vary with the seed
    for prompt, reference in zip(evaluation.rows["prompts"][0], evaluation.references["prompts"]):
        reading = read(reference)
        asked = prompt.split(" on a ")[-1].removesuffix(" background") if " background" in prompt else None
        if asked:
            assert reading.background == asked, prompt
        else:
            assert prompt.endswith("in the center" if reading.position == "center" else f"on the {reading.position}"), prompt
    assert "class" not in evaluation.references  # the class row is held against the base's images, not a render


def test_each_grid_sets_references_and_the_bases_class_images_over_the_techniques_seed_for_seed(world, tmp_path):
    subject, side = SUBJECTS["bullseye"], world.resolution
    records = []
    for name, shade in (("base", 10), ("lora", 200)):
        evaluation = evaluate_subject(FlatPipeline(shade, side), subject, "sks", images_per_prompt=SEEDS, seed=FIRST_SEED, steps=1)
        kept = evaluation.save_images(tmp_path / name / "evaluation.npz")
        records.append({"name": name, "evaluation_images": str(kept)})
    write_sample_grids(records)
    base, lora = records
    reloaded = Evaluation.load_images(tmp_path / "lora" / "evaluation.npz")
    seeds = range(FIRST_SEED, FIRST_SEED + SEEDS)
    assert lora["sample_seeds"] == list(seeds)
    assert lora["sample_rows"] == ["subject prompt: reference", "subject prompt: lora", "asked background / place: reference",
                                   "asked background / place: lora", "class prompt: base", "class prompt: lora"]
    rows = comparison_rows("lora", reloaded, Evaluation.load_images(tmp_path / "base" / "evaluation.npz"))
    found = cells(lora["samples"], rows)
    prompts = reloaded.rows
    expected = [reloaded.references["subject"],
                [flat(200, seed, prompt, side) for seed, prompt in zip(seeds, prompts["subject"][0])],
                reloaded.references["prompts"],
                [flat(200, seed, prompt, side) for seed, prompt in zip(seeds, prompts["prompts"][0])],
                [flat(10, seed, "a circle", side) for seed in seeds],  # the base's class images
                [flat(200, seed, "a circle", side) for seed in seeds]]
    for row, (want, got) in enumerate(zip(expected, found)):
        for column, (image, cell) in enumerate(zip(want, got)):
            assert np.array_equal(cell, image), (lora["sample_rows"][row], column)
    assert scale_for(side) * side == layout(rows).cell  # 32 px images grow 3x, 64 px 2x
    # The base's own grid: references over its images; its class row has nothing to be held against.
    assert base["sample_rows"][-1] == "class prompt: base" and "class prompt: reference" not in base["sample_rows"]
    assert len(base["sample_rows"]) == 5


def test_a_folder_subject_grid_is_the_techniques_rows_only(tmp_path):
    records = []
    for name, shade in (("base", 10), ("lora", 200)):
        evaluation = sample_prompt(FlatPipeline(shade, 40), "a photo of sks toy", images_per_prompt=SEEDS, seed=FIRST_SEED, steps=1)
        assert evaluation.scores == {} and evaluation.references == {}
        records.append({"name": name, "evaluation_images": str(evaluation.save_images(tmp_path / name / "evaluation.npz"))})
    records.append({"name": "old", "samples": "kept.png"})  # a result from before evaluations kept their images
    write_sample_grids(records)
    lora = records[1]
    assert lora["sample_rows"] == ["subject prompt: lora"]
    rows = Evaluation.load_images(tmp_path / "lora" / "evaluation.npz")
    grid_rows = comparison_rows("lora", rows, None)
    (found,) = cells(lora["samples"], grid_rows)
    assert [np.array_equal(cell, flat(200, seed, "a photo of sks toy", 40)) for cell, seed in
            zip(found, range(FIRST_SEED, FIRST_SEED + SEEDS))] == [True] * SEEDS
    assert Image.open(lora["samples"]).size[1] == layout(grid_rows).cell  # one row, nothing else
    assert records[2] == {"name": "old", "samples": "kept.png"}


def test_the_worker_keeps_a_folder_subjects_prompt_images_for_its_grid(tmp_path):
    spec = {"technique": "base", "model": "tiny-sd", "subject": str(tmp_path / "photos"), "identifier": None,
            "training": {"prompt": "a photo of sks toy"}, "out": str(tmp_path / "base"), "device": "cpu",
            "evaluation": {"images_per_prompt": 2, "seed": FIRST_SEED, "sample_steps": 2, "guidance": 5.0}}
    result = evaluate_experiment(spec, None)
    assert not any(key in result for key in ("subject_fidelity", "prompt_fidelity", "class_preservation"))  # no renderer
    kept = Evaluation.load_images(result["evaluation_images"])
    assert list(kept.rows) == ["subject"] and kept.rows["subject"][0] == ["a photo of sks toy"] * 2
    assert kept.seeds == [FIRST_SEED, FIRST_SEED + 1] and kept.references == {}
    assert not np.array_equal(*kept.rows["subject"][1])  # two seeds, two images


def test_a_grid_shows_the_first_seeds_of_a_large_evaluation(tmp_path):
    """Precise scores take many seeds; the picture keeps GRID_SEEDS columns of them."""
    subject, side = SUBJECTS["flag"], WORLDS[1].resolution
    records = []
    for name, shade in (("base", 10), ("lora", 200)):
        evaluation = evaluate_subject(FlatPipeline(shade, side), subject, "ohwx", images_per_prompt=GRID_SEEDS + 4,
                                      seed=FIRST_SEED, steps=1)
        records.append({"name": name, "evaluation_images": str(evaluation.save_images(tmp_path / name / "evaluation.npz"))})
    write_sample_grids(records)
    lora = records[1]
    assert lora["sample_seeds"] == list(range(FIRST_SEED, FIRST_SEED + GRID_SEEDS))
    rows = comparison_rows("lora", Evaluation.load_images(tmp_path / "lora" / "evaluation.npz"),
                           Evaluation.load_images(tmp_path / "base" / "evaluation.npz"))
    assert all(len(row.images) == GRID_SEEDS for row in rows)
    assert Image.open(lora["samples"]).size == layout(rows).size[::-1]
