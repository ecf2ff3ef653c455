"""The precision study's part of the report: per stored precision, the artifact's size and its images' deviation."""

from __future__ import annotations

import html

COLUMNS = (  # (key, heading, format)
    ("bytes", "artifact bytes", "{:,}"),
    ("psnr_db", "PSNR dB vs fp32", "{:.1f}"),
    ("max_pixel_difference", "max pixel difference", "{}"),
    ("clip_distance", "CLIP distance", "{:.5f}"),
    ("dino_distance", "DINO distance", "{:.5f}"),
)
EXPLANATION = ("The artifact's tensors stored in each precision, the model in fp32 throughout; images at the evaluation "
               "seeds for the experiment's prompt, compared with the fp32 copy's image for image (PSNR: higher is closer, "
               "none = identical; distance: 1 - cosine similarity of the embeddings).")


def _cell(row: dict, key: str, form: str) -> str:
    if "error" in row:
        return "n/a"
    value = row.get(key)
    if value is None:
        return "identical" if key == "psnr_db" and "bytes" in row else "n/a"
    return form.format(value)


def _table(study: dict) -> tuple[list[str], list[list[str]]]:
    keys = [column for column in COLUMNS if any(column[0] in row for row in study["precisions"])]
    rows = [[row["precision"], *(_cell(row, key, form) for key, _, form in keys)] for row in study["precisions"]]
    return ["precision", *(heading for _, heading, _ in keys)], rows


def _errors(study: dict) -> list[str]:
    return [f"{row['precision']}: {row['error']}" for row in study["precisions"] if "error" in row]


def _studies(records: list[dict]):
    """(experiment name, study, table headings, table rows, error lines) for each record that has a study."""
    for record in records:
        study = record.get("precision_study")
        if study:
            yield (record["name"], study, *_table(study), _errors(study))


def precision_markdown(records: list[dict]) -> list[str]:
    lines = []
    for name, study, headings, rows, errors in _studies(records):
        lines += [f"## Precision study: {name}", "", EXPLANATION, f"Prompt: {study['prompt']!r}, {study['images']} images.",
                  "", "| " + " | ".join(headings) + " |", "|---" * len(headings) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", *errors, ""]
    return lines


def precision_html(records: list[dict]) -> str:
    parts = []
    for name, study, headings, rows, errors in _studies(records):
        head = "".join(f"<th>{html.escape(heading)}</th>" for heading in headings)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
        notes = "".join(f"<p>{html.escape(error)}</p>" for error in errors)
        parts.append(f"<h2>Precision study: {html.escape(name)}</h2><p>{html.escape(EXPLANATION)} Prompt: "
                     f"{html.escape(study['prompt'])}, {study['images']} images.</p><table><tr>{head}</tr>{body}</table>{notes}")
    return "".join(parts)
