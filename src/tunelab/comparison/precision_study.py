"""The precision study: one experiment's artifact stored in fp32, fp16 and bf16, its size in each, and how far the
images it gives move from the fp32 copy's (same model, prompt and seeds): PSNR, and with CLIP/DINO given the
embedding distance 1 - cosine similarity, image for image.

The model runs in fp32 throughout; only the artifact's stored tensors are rounded, as a file saved in that precision
would hold them. Run in its own process, like an experiment: `python -m tunelab.comparison.precision_study SPEC_JSON`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tunelab.comparison.worker import artifact_bytes, evaluation_session, main, run_module
from tunelab.errors import TunelabError
from tunelab.evaluate.dreambench import mean_matched_cosine
from tunelab.evaluate.dreambench_protocol import Embedders
from tunelab.evaluate.sampling import sample_images
from tunelab.formats.stored_precision import stored_in_precision
from tunelab.methods import method_class
from tunelab.precision import PRECISIONS

REFERENCE = "fp32"


def study_spec(experiment_spec: dict, artifact: str, embedders: Embedders) -> dict:
    """The study of one finished experiment (its spec and artifact), written into its folder's `precision/`."""
    folder = Path(experiment_spec["out"]) / "precision"
    return {
        "name": f"{experiment_spec['name']} (precision study)",
        "experiment": experiment_spec["name"],
        "technique": experiment_spec["technique"],
        "fingerprint": json.dumps([experiment_spec["fingerprint"], experiment_spec["evaluation"]], sort_keys=True),
        "model": experiment_spec["model"],
        "identifier": experiment_spec["identifier"],
        "prompt": experiment_spec["training"]["prompt"],
        "artifact": artifact,
        "embedders": {"clip": embedders.clip, "dino": embedders.dino},
        "evaluation": experiment_spec["evaluation"],
        "device": experiment_spec["device"],
        "training": {},  # the compare runner's resume marker goes here; nothing is trained
        "out": str(folder),
        "result": str(folder / "result.json"),
    }


def add_precision_study(config, specs: list[dict], records: list[dict]) -> None:
    """With `precision_study: NAME`, run the study of that experiment (unless its result is there for the same
    experiment and evaluation) in a process of its own, and put the result into the experiment's record."""
    name = config.options.precision_study
    if not name:
        return
    index = next(index for index, spec in enumerate(specs) if spec["name"] == name)
    spec = study_spec(specs[index], records[index]["artifact"], config.embedders)
    result = Path(spec["result"])
    if not (result.is_file() and json.loads(result.read_text()).get("fingerprint") == spec["fingerprint"]):
        Path(spec["out"]).mkdir(parents=True, exist_ok=True)
        code = run_module("tunelab.comparison.precision_study", spec)
        if code != 0 or not result.is_file():
            raise TunelabError(f"the precision study of {name!r} failed (exit {code}); its output is in {spec['out']}")
    records[index]["precision_study"] = json.loads(result.read_text())


def psnr(images: list[np.ndarray], reference: list[np.ndarray]) -> float | None:
    """Peak signal-to-noise ratio in dB over all pixels of uint8 images; None when they are identical."""
    difference = np.stack(images).astype(np.float64) - np.stack(reference).astype(np.float64)  # (N, H, W, 3)
    mse = float(np.mean(difference**2))
    return None if mse == 0 else 10 * math.log10(255.0**2 / mse)


def embedding_distance(embed, images: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """1 - the mean cosine similarity of each image's embedding with its counterpart's."""
    as_pil = [Image.fromarray(image) for image in images]
    cosine = mean_matched_cosine(embed([Image.fromarray(image) for image in reference]), embed(as_pil))
    return max(0.0, 1.0 - cosine)  # rounding can put identical images a hair past a cosine of 1


def _images_with(spec: dict, artifact: Path) -> list[np.ndarray]:
    attach = method_class(spec["technique"]).generate_options(artifact, spec["identifier"])
    session = evaluation_session(spec, attach)
    evaluation = spec["evaluation"]
    seeds = [evaluation["seed"] + index for index in range(evaluation["images_per_prompt"])]
    images = sample_images(session.pipeline, [spec["prompt"]] * len(seeds), seeds, steps=evaluation["sample_steps"],
                           guidance=evaluation["guidance"])
    session.detach()
    return images


def run_study(spec: dict) -> dict:
    artifact, folder = Path(spec["artifact"]), Path(spec["out"])
    rows, images = [], {}
    for precision in PRECISIONS:
        row = {"precision": precision}
        try:
            stored = stored_in_precision(artifact, precision, folder / precision / artifact.name)
        except TunelabError as error:  # fp16 overflows values past 65504: the file cannot be written
            rows.append(row | {"error": str(error)})
            continue
        images[precision] = _images_with(spec, stored)
        rows.append(row | {"bytes": artifact_bytes(stored)})
    clip, dino = Embedders(**spec["embedders"]).load()
    reference = images.get(REFERENCE)
    for row in rows:
        if row["precision"] not in images or reference is None:
            continue
        own = images[row["precision"]]
        row["psnr_db"] = psnr(own, reference)
        row["max_pixel_difference"] = int(np.abs(np.stack(own).astype(int) - np.stack(reference).astype(int)).max())
        if clip is not None:
            row["clip_distance"] = embedding_distance(clip.images, own, reference)
        if dino is not None:
            row["dino_distance"] = embedding_distance(dino.images, own, reference)
    return {"name": spec["name"], "experiment": spec["experiment"], "fingerprint": spec["fingerprint"],
            "prompt": spec["prompt"], "images": len(reference or []), "precisions": rows}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], run=run_study))
