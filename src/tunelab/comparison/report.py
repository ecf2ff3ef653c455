"""results.json, report.md and a self-contained report.html (images inline, plots as SVG)."""

from __future__ import annotations

import html
import json
from pathlib import Path

from tunelab.evaluate.dreambench import EMBEDDING_METRICS

from tunelab.comparison.label_placement import Box, place_labels
from tunelab.comparison.report_composition import composition_html, composition_markdown
from tunelab.comparison.report_images import inline_png
from tunelab.comparison.report_precision import precision_html, precision_markdown

COLUMNS = (  # (key, heading, format)
    ("subject", "subject", "{}"),
    ("technique", "technique", "{}"),
    ("train_seconds", "train s", "{:.1f}"),
    ("steps_per_second", "steps/s", "{:.2f}"),
    ("peak_memory_mb", "peak MB", "{:.0f}"),
    ("trainable_params", "trainable params", "{:,}"),
    ("artifact_bytes", "artifact bytes", "{:,}"),
    ("usd", "USD", "{:.5f}"),
    ("subject_fidelity", "subject fidelity", "{:.3f}"),
    ("prompt_fidelity", "prompt fidelity", "{:.3f}"),
    ("prior_drift", "prior drift", "{:+.3f}"),
    ("diversity", "diversity", "{:.3f}"),
    ("clip_i", "CLIP-I", "{:.3f}"),
    ("clip_t", "CLIP-T", "{:.3f}"),
    ("dino", "DINO", "{:.3f}"),
)
OPTIONAL_COLUMNS = EMBEDDING_METRICS  # DreamBench's, measured only with clip/dino: shown when some record has them
PUBLIC_KEYS = ("name", "subject", "technique", "train_seconds", "steps", "steps_per_second", "peak_memory_mb", "trainable_params",
               "artifact", "artifact_bytes", "usd", "subject_fidelity", "prompt_fidelity", "prior_drift",
               "class_preservation", "diversity", "samples", "sample_prompts", "sample_rows", "sample_seeds", "loss_curve")

GRID_LAYOUT = ("Rows in pairs, one pair per prompt set: the subject prompt, prompts asking for a background or a place, "
               "the class prompt. Over each experiment's row, what it should look like: the subject rendered as the "
               "prompt asks (reference); for the class prompt, the untuned base's images, so prior drift shows. "
               "Columns: the same seeds for every experiment. A folder subject has no renders: its rows stand alone.")


def _cell(record: dict, key: str, form: str) -> str:
    value = record.get(key)
    return "n/a" if value is None else form.format(value)


def public_records(records: list[dict]) -> list[dict]:
    extra = (*EMBEDDING_METRICS, "embedding_details", "precision_study", "composition_study")
    return [{key: record.get(key) for key in (*PUBLIC_KEYS, *extra)} for record in records]


def shown_columns(records: list[dict]) -> list[tuple[str, str, str]]:
    """DreamBench's columns when measured; the subject's when experiments learn different subjects."""
    several_subjects = len({Path(str(record.get("subject"))).name for record in records}) > 1
    return [column for column in COLUMNS
            if (column[0] not in OPTIONAL_COLUMNS or any(record.get(column[0]) is not None for record in records))
            and (column[0] != "subject" or several_subjects)]


def backbone_notes(records: list[dict]) -> list[str]:
    """Which models measured DreamBench's numbers: without the backbone a CLIP or DINO number means little."""
    details = next((record["embedding_details"] for record in records if record.get("embedding_details")), {})
    notes = []
    for metric, detail in details.items():
        backbone, ceiling = detail["backbone"], detail.get("real_images")
        notes.append(f"{metric.replace('_', '-').upper()} measured with {backbone['name']} ({backbone['architecture']})"
                     + ("." if ceiling is None else f"; the subject's own images against each other: {ceiling:.3f}."))
    return notes


def markdown(records: list[dict], title: str, notes: list[str]) -> str:
    columns = shown_columns(records)
    lines = [f"# {title}", "", *notes, "", "| experiment | " + " | ".join(h for _, h, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for record in records:
        lines.append(f"| {record['name']} | " + " | ".join(_cell(record, k, f) for k, _, f in columns) + " |")
    lines += ["", f"Sample grids: `experiments/NAME/samples.png`. {GRID_LAYOUT}", "", *precision_markdown(records),
              *composition_markdown(records)]
    return "\n".join(lines)


def _polyline_svg(series: dict[str, list[tuple[float, float]]], width=480, height=220, x_label="step", y_label="loss") -> str:
    points = [p for values in series.values() for p in values]
    if not points:
        return "<p>no loss curves (the base is not trained)</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs) or 1, min(ys), max(ys)
    span_x, span_y = (x1 - x0) or 1, (y1 - y0) or 1
    colours = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}">',
             f'<rect x="40" y="0" width="{width - 40}" height="{height}" fill="none" stroke="#999"/>']
    for index, (name, values) in enumerate(series.items()):
        coords = " ".join(f"{40 + (x - x0) / span_x * (width - 40):.1f},{height - (y - y0) / span_y * height:.1f}" for x, y in values)
        colour = colours[index % len(colours)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}"/>')
        parts.append(f'<text x="{50 + index * 110}" y="{height + 32}" fill="{colour}" font-size="12">{html.escape(name)}</text>')
    parts.append(f'<text x="0" y="12" font-size="11">{y1:.3g}</text><text x="0" y="{height}" font-size="11">{y0:.3g}</text>')
    parts.append(f'<text x="{width // 2}" y="{height + 14}" font-size="11">{x_label}</text>')
    parts.append(f'<text x="42" y="12" font-size="11">{y_label}</text></svg>')
    return "".join(parts)


def _smoothed(curve: list[tuple[float, float]], window: int = 10) -> list[tuple[float, float]]:
    """Trailing mean of the losses: per-step diffusion losses jump with the sampled timesteps."""
    values = [loss for _, loss in curve]
    return [(step, sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1))) for i, (step, _) in enumerate(curve)]


def _scatter_svg(records: list[dict], width=560, height=240, font_size=11) -> str:
    """Quality (subject fidelity) against cost (USD), one labelled point per experiment; labels never overlap."""
    points = [(r["usd"], r["subject_fidelity"], r["name"]) for r in records if r.get("subject_fidelity") is not None]
    if not points:
        return "<p>no quality scores (the subject is not a toyworld subject)</p>"
    top_x = max(p[0] for p in points) or 1
    area = Box(44, 18, width - 10, 18 + height)  # the plot; tick labels left of it, axis titles above and below
    pad = 10  # keeps markers off the frame
    spot = [(area.x0 + pad + usd / top_x * (area.x1 - area.x0 - 2 * pad),
             area.y1 - pad - fidelity * (area.y1 - area.y0 - 2 * pad), name) for usd, fidelity, name in points]
    labels = place_labels(spot, area, font_size)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{area.y1 + 30:.0f}">',
             f'<rect class="plot" x="{area.x0}" y="{area.y0}" width="{area.x1 - area.x0}" height="{area.y1 - area.y0}" '
             'fill="none" stroke="#999"/>']
    for (x, y, name), label in zip(spot, labels):
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#1f77b4"><title>{html.escape(name)}</title></circle>')
        if label is None:
            continue
        if label.leader:
            to_x, to_y = label.box.nearest_point(x, y)
            parts.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{to_x:.1f}" y2="{to_y:.1f}" stroke="#bbb"/>')
        parts.append(f'<text class="label" x="{label.x:.1f}" y="{label.baseline:.1f}" font-size="{font_size}">{html.escape(name)}</text>')
    unplaced = [name for (_, _, name), label in zip(spot, labels) if label is None]
    if unplaced:  # more labels than the plot has room for: named under it (hover a point for its name)
        parts.append(f'<text x="{area.x0}" y="{area.y1 + 28:.0f}" font-size="{font_size}">also: {html.escape(", ".join(unplaced))}</text>')
    parts.append(f'<text x="0" y="{area.y0 + pad + 4}" font-size="11">1.0</text>'
                 f'<text x="0" y="{area.y1 - pad + 4}" font-size="11">0</text>')
    parts.append(f'<text x="{width // 2 - 60}" y="{area.y1 + 16:.0f}" font-size="11">cost, USD (0 to {top_x:.4g})</text>')
    parts.append(f'<text x="{area.x0}" y="12" font-size="11">subject fidelity</text></svg>')
    return "".join(parts)


def _prompt_list(prompts: str | list[str]) -> str:
    """A grid row's prompts, one per column (results written before rows kept all of them hold the first only)."""
    return prompts if isinstance(prompts, str) else ", ".join(prompts)


def _inline_png(path: str | None) -> str:
    if not path or not Path(path).is_file():
        return "<p>no samples</p>"
    return inline_png(path, "samples")


def html_report(records: list[dict], title: str, notes: list[str]) -> str:
    columns = shown_columns(records)
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in columns)
    rows = "".join(
        f"<tr><td>{html.escape(r['name'])}</td>" + "".join(f"<td>{html.escape(_cell(r, k, f))}</td>" for k, _, f in columns) + "</tr>"
        for r in records
    )
    grids = "".join(
        f"<h3>{html.escape(r['name'])} ({html.escape(r['technique'])})</h3>"
        + (f"<p class=prompts>prompts: {' · '.join(html.escape(_prompt_list(p)) for p in r['sample_prompts'].values())}"
           + (f"; seeds {r['sample_seeds'][0]} to {r['sample_seeds'][-1]}" if r.get("sample_seeds") else "") + "</p>"
           if r.get("sample_prompts") else "")
        + _inline_png(r.get("samples"))
        for r in records
    )
    curves = _polyline_svg({r["name"]: _smoothed(r["loss_curve"]) for r in records if r.get("loss_curve")},
                           y_label="loss (mean of the last 10 points)")
    notes_html = "".join(f"<p>{html.escape(note)}</p>" for note in notes)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} td:first-child,th:first-child{{text-align:left}}
.prompts{{color:#555;font-size:90%}}</style></head>
<body><h1>{html.escape(title)}</h1>{notes_html}
<h2>Results</h2><table><tr><th>experiment</th>{head}</tr>{rows}</table>
<h2>Quality against cost</h2>{_scatter_svg(records)}
{precision_html(records)}
{composition_html(records)}
<h2>Loss curves</h2>{curves}
<h2>Samples</h2><p>{html.escape(GRID_LAYOUT)}</p>{grids}
</body></html>
"""


def write_reports(records: list[dict], out: Path, title: str, notes: list[str]) -> dict[str, Path]:
    notes = [*notes, *backbone_notes(records)]
    records = public_records(records)
    paths = {"json": out / "results.json", "markdown": out / "report.md", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(records, indent=2) + "\n")
    paths["markdown"].write_text(markdown(records, title, notes))
    paths["html"].write_text(html_report(records, title, notes))
    return paths
