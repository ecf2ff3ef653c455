"""The composition study's part of the report: each concept's fidelity per variant, the files' sizes, image rows."""

from __future__ import annotations

import html
from pathlib import Path

from tunelab.comparison.composition_study import FIDELITY, VARIANTS
from tunelab.comparison.report_images import inline_png

METRIC_TITLES = {"subject_fidelity": "subject fidelity", "clip_i": "CLIP-I", "dino": "DINO"}
EXPLANATION = ("Each concept's fidelity with its own LoRA alone (the experiment's evaluation), with both LoRA files "
               "attached at weight 1 (together), and with the two merged into one file by stacking their ranks (concat: "
               "exactly their sum, so its images match together's up to float rounding) and by SVD at the larger rank "
               "(svd); base: the untuned model. Same prompts and seeds as the experiments' evaluation.")


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _tables(study: dict) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """(fidelity headings, rows: one per concept and metric), (file headings, rows: one per variant's file)."""
    headings = ["concept", "metric", "base", *VARIANTS]
    rows = []
    for concept in study["concepts"]:
        label = f"{Path(concept['subject']).name} ({concept['experiment']})"  # a toyworld subject, or a folder's name
        metrics = [key for key in FIDELITY if any(key in scores for scores in concept["variants"].values())]
        for metric in metrics or ["subject_fidelity"]:
            rows.append([label, METRIC_TITLES[metric], _score(concept["base"].get(metric)),
                         *(_score(concept["variants"].get(variant, {}).get(metric)) for variant in VARIANTS)])
    file_rows = [[row["variant"], row["file"], str(row["rank"]), f"{row['bytes']:,}"] for row in study["files"]]
    return headings, rows, ["variant", "file(s)", "rank", "bytes"], file_rows


def _markdown_table(headings: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headings) + " |", "|---" * len(headings) + "|", *("| " + " | ".join(row) + " |" for row in rows)]


def _html_table(headings: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(heading)}</th>" for heading in headings)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _studies(records: list[dict]):
    for record in records:
        if record.get("composition_study"):
            yield record["composition_study"]


def composition_markdown(records: list[dict]) -> list[str]:
    lines = []
    for study in _studies(records):
        headings, rows, file_headings, file_rows = _tables(study)
        lines += [f"## Composition study: {' + '.join(study['loras'])}", "", EXPLANATION, "", *_markdown_table(headings, rows),
                  "", *_markdown_table(file_headings, file_rows), "",
                  "Image rows: `composition/EXPERIMENT.png` (the subject as asked, then each variant's images).", ""]
    return lines


def _inline_grid(path: str | None, concept: str) -> str:
    if not path or not Path(path).is_file():
        return ""
    return f"<h3>{html.escape(concept)}</h3>{inline_png(path, concept)}"


def composition_html(records: list[dict]) -> str:
    parts = []
    for study in _studies(records):
        headings, rows, file_headings, file_rows = _tables(study)
        grids = "".join(_inline_grid(concept.get("grid"), f"{concept['experiment']}: {concept['prompt']}")
                        for concept in study["concepts"])
        parts.append(f"<h2>Composition study: {html.escape(' + '.join(study['loras']))}</h2><p>{html.escape(EXPLANATION)}</p>"
                     f"{_html_table(headings, rows)}<h3>Files</h3>{_html_table(file_headings, file_rows)}{grids}")
    return "".join(parts)
