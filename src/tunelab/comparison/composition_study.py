"""The composition study: two LoRAs of a comparison, each trained on its own subject (a concept), used together.

For each concept, its subject fidelity (toyworld's exact metric, or DreamBench's CLIP-I and DINO with clip/dino
given: the experiment's own evaluation, on the concept's prompts and seeds) with
  alone     its own LoRA (the experiment's evaluation, not run again),
  together  both LoRA files attached at weight 1 (`tunelab generate --lora A --lora B`),
  concat    the two merged into one file by stacking ranks (`lora combine --mode concat`: exactly their sum),
  svd       the two merged by SVD at the larger of their ranks (`lora combine --mode svd`),
with the size and rank of each file and an image row per variant. Run in its own process, like an experiment:
`python -m tunelab.comparison.composition_study SPEC_JSON`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from pathlib import Path

from tunelab.comparison.report_images import GRID_SEEDS, GridRow, save_grid
from tunelab.comparison.worker import artifact_bytes, evaluate_session, evaluation_session, main, run_module
from tunelab.errors import TunelabError
from tunelab.evaluate.protocol import Evaluation
from tunelab.formats.lora_io import read_lora_file
from tunelab.lora.tools import CombineOptions, LorasInput, combine
from tunelab.methods import method_class

VARIANTS = ("alone", "together", "concat", "svd")
FIDELITY = ("subject_fidelity", "clip_i", "dino")  # a concept's fidelity: toyworld's, or DreamBench's with clip/dino


def fidelity(record: dict) -> dict:
    return {key: record[key] for key in FIDELITY if record.get(key) is not None}


def study_spec(config, specs: list[dict], records: list[dict]) -> dict:
    """The study of the two finished experiments `composition: {loras: [A, B]}` names, in OUT/composition/."""
    by_name = {spec["name"]: (spec, record) for spec, record in zip(specs, records)}
    concepts = []
    for name in config.composition.loras:
        spec, record = by_name[name]
        base = by_name.get(spec["base"], (None, {}))[1]
        concepts.append({"experiment": name, "spec": spec, "artifact": record["artifact"], "alone": fidelity(record),
                         "alone_images": record.get("evaluation_images"), "base": fidelity(base)})
    folder = Path(concepts[0]["spec"]["out"]).parent.parent / "composition"
    composition = dataclasses.asdict(config.composition)
    fingerprint = [[concept["spec"]["fingerprint"], concept["spec"]["evaluation"]] for concept in concepts]
    return {
        "name": "composition study",
        "fingerprint": json.dumps([fingerprint, composition], sort_keys=True),
        "technique": concepts[0]["spec"]["technique"],
        "rank": config.composition.rank,
        "concepts": concepts,
        "out": str(folder),
        "result": str(folder / "result.json"),
    }


def add_composition_study(config, specs: list[dict], records: list[dict]) -> None:
    """With `composition:`, run the study (unless its result is there for the same experiments and evaluation) in a
    process of its own, and put the result into the first named experiment's record."""
    if config.composition is None:
        return
    spec = study_spec(config, specs, records)
    result = Path(spec["result"])
    if not (result.is_file() and json.loads(result.read_text()).get("fingerprint") == spec["fingerprint"]):
        Path(spec["out"]).mkdir(parents=True, exist_ok=True)
        code = run_module("tunelab.comparison.composition_study", spec)
        if code != 0 or not result.is_file():
            raise TunelabError(f"the composition study of {' and '.join(config.composition.loras)} failed (exit {code}); "
                               f"its output is in {spec['out']}")
    first = next(index for index, record in enumerate(records) if record["name"] == config.composition.loras[0])
    records[first]["composition_study"] = json.loads(result.read_text())


def attached_together(options: list[dict]) -> dict:
    """Generate options that attach every artifact at once: the lists of files joined (`--lora A --lora B`)."""
    together: dict = {}
    for one in options:
        for key, value in one.items():
            if isinstance(value, list):
                together[key] = together.get(key, []) + value
            elif together.setdefault(key, value) != value:
                raise TunelabError(f"the artifacts ask for different {key!r} ({together[key]!r}, {value!r}): not attachable together")
    return together


def lora_rank(path: str | Path) -> int:
    """The largest module rank of a LoRA file."""
    return max(module.rank for module in read_lora_file(path).lora.values())


def merged_files(concepts: list[dict], folder: Path, rank: int | None) -> dict[str, Path]:
    """The two LoRAs combined into one file each way, by the `lora combine` tool (its report goes to combine.log)."""
    inputs = LorasInput([concept["artifact"] for concept in concepts])
    rank = rank or max(lora_rank(concept["artifact"]) for concept in concepts)
    with open(folder / "combine.log", "w") as log, contextlib.redirect_stdout(log):
        return {"concat": combine(inputs, CombineOptions(out=str(folder / "concat.safetensors"), mode="concat")),
                "svd": combine(inputs, CombineOptions(out=str(folder / "svd.safetensors"), mode="svd", rank=rank))}


def file_rows(concepts: list[dict], merged: dict[str, Path]) -> list[dict]:
    """Size and rank of what each variant loads."""
    rows = [{"variant": "alone", "file": concept["experiment"], "bytes": artifact_bytes(Path(concept["artifact"])),
             "rank": lora_rank(concept["artifact"])} for concept in concepts]
    rows.append({"variant": "together", "file": " + ".join(concept["experiment"] for concept in concepts),
                 "bytes": sum(row["bytes"] for row in rows), "rank": sum(row["rank"] for row in rows)})
    rows += [{"variant": variant, "file": path.name, "bytes": artifact_bytes(path), "rank": lora_rank(path)}
             for variant, path in merged.items()]
    return rows


def _shown_row(evaluation: Evaluation) -> tuple[list, list]:
    """The row a concept's grid shows: toyworld's subject prompt, else the first (DreamBench's prompts)."""
    name = "subject" if "subject" in evaluation.rows else next(iter(evaluation.rows))
    return evaluation.rows[name][1][:GRID_SEEDS], evaluation.references.get(name, [])[:GRID_SEEDS]


def concept_grid(images: dict[str, str | None], path: Path) -> str | None:
    """One PNG per concept: the subject as asked (toyworld's render), then each variant's images, one column per seed."""
    rows = []
    for variant in VARIANTS:
        kept = images.get(variant)
        if not kept or not Path(kept).is_file():
            continue
        shown, references = _shown_row(Evaluation.load_images(Path(kept)))
        if references and not rows:
            rows.append(GridRow("subject", "reference", references))
        rows.append(GridRow("subject", variant, shown))
    return str(save_grid(rows, path)) if rows else None


def run_study(spec: dict) -> dict:
    folder = Path(spec["out"])
    concepts, method = spec["concepts"], method_class(spec["technique"])
    merged = merged_files(concepts, folder, spec["rank"])
    attach = {
        "together": attached_together([method.generate_options(Path(concept["artifact"]), concept["spec"]["identifier"])
                                       for concept in concepts]),
        **{variant: method.generate_options(path, None) for variant, path in merged.items()},
    }
    scores = {concept["experiment"]: {"alone": concept["alone"]} for concept in concepts}
    images = {concept["experiment"]: {"alone": concept["alone_images"]} for concept in concepts}
    for variant, options in attach.items():
        session = evaluation_session(concepts[0]["spec"], options)  # one model load per variant, both concepts on it
        for concept in concepts:
            name = concept["experiment"]
            evaluated = evaluate_session(session, {**concept["spec"], "out": str(folder / variant / name)}, subject_only=True)
            scores[name][variant], images[name][variant] = fidelity(evaluated), evaluated["evaluation_images"]
        session.detach()
    results = []
    for concept in concepts:
        name = concept["experiment"]
        grid = concept_grid(images[name], folder / f"{name}.png")
        results.append({"experiment": name, "subject": concept["spec"]["subject"], "prompt": concept["spec"]["training"]["prompt"],
                        "base": concept["base"], "variants": scores[name], "images": images[name], "grid": grid})
    return {"name": spec["name"], "fingerprint": spec["fingerprint"], "loras": [c["experiment"] for c in concepts],
            "files": file_rows(concepts, merged), "concepts": results}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], run=run_study))
