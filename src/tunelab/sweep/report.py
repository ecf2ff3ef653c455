"""A sweep's report: sweep.json (every trial, both frontiers, the recommended setting), report.md and a
self-contained report.html with the quality-vs-size and quality-vs-cost plots."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from tunelab.sweep.config import SweepConfig
from tunelab.sweep.frontier import COST, SIZE, non_dominated, recommended

FRONTIERS = {"size": (SIZE, "artifact bytes"), "cost": (COST, "cost, USD")}
TRIAL_KEYS = ("name", "train_seconds", "steps", "steps_per_second", "peak_memory_mb", "trainable_params", "artifact",
              "artifact_bytes", "usd", "subject_fidelity", "prompt_fidelity", "prior_drift", "diversity", "samples")


def summary(records: list[dict], config: SweepConfig) -> dict:
    """What sweep.json holds: the base, every trial with its settings, the frontiers and the recommendation."""
    base = records[0] if records and records[0]["name"] == "base" else None
    trials = [record for record in records if record is not base]
    objective, maximize = config.objective, config.maximize
    chosen = recommended(trials, objective, maximize, config.tolerance)
    return {
        "objective": objective,
        "maximize": maximize,
        "tolerance": config.tolerance,
        "technique": config.technique,
        "training": config.training,
        "search": "grid" if config.search is None else {"optuna": vars(config.search)},
        "base": None if base is None else {key: base.get(key) for key in TRIAL_KEYS},
        "trials": [{**{key: trial.get(key) for key in TRIAL_KEYS}, "params": trial["params"]} for trial in trials],
        "frontier": {name: [trial["name"] for trial in non_dominated(trials, objective, maximize, key)]
                     for name, (key, _) in FRONTIERS.items()},
        "recommended": None if chosen is None else {
            "name": chosen["name"], "params": chosen["params"], objective: chosen[objective],
            "artifact_bytes": chosen[SIZE], "usd": chosen[COST],
            "why": f"the smallest artifact whose {objective} is within {config.tolerance:g} of the best trial's",
        },
    }


def base_line(data: dict) -> str:
    if data["base"] is None:
        return "The untuned base was not evaluated (base: false)."
    return f"Base (untuned): {data['objective']} {_number(data['base'].get(data['objective']), '{:.3f}')}."


def _number(value, form="{:.4g}") -> str:
    return "n/a" if value is None else form.format(value)


def _table(trials: list[dict], keys: list[str], objective: str) -> list[list[str]]:
    rows = [["trial", *keys, objective, "artifact bytes", "train s", "USD"]]
    for trial in trials:
        rows.append([trial["name"], *(str(trial["params"][key]) for key in keys), _number(trial[objective], "{:.3f}"),
                     f"{trial['artifact_bytes']:,}", _number(trial["train_seconds"], "{:.1f}"), _number(trial["usd"], "{:.5f}")])
    return rows


def markdown(data: dict, title: str, notes: list[str]) -> str:
    keys = list(data["trials"][0]["params"]) if data["trials"] else []
    by_name = {trial["name"]: trial for trial in data["trials"]}

    def table(trials):
        rows = _table(trials, keys, data["objective"])
        return ["| " + " | ".join(rows[0]) + " |", "|---" * len(rows[0]) + "|", *("| " + " | ".join(row) + " |" for row in rows[1:])]

    lines = [f"# {title}", "", *notes, ""]
    if data["recommended"]:
        chosen = data["recommended"]
        lines += [f"**Recommended: {chosen['name']}** ({', '.join(f'{k} {v}' for k, v in chosen['params'].items())}): "
                  f"{chosen['why']}.", ""]
    for name, (_, label) in FRONTIERS.items():
        lines += [f"## Frontier: {data['objective']} against {label}", "", *table([by_name[n] for n in data["frontier"][name]]), ""]
    lines += ["## Every trial", "", *table(data["trials"]), "", base_line(data), ""]
    return "\n".join(lines)


def frontier_svg(trials: list[dict], x_key: str, x_label: str, objective: str, front: list[str], chosen: str | None,
                 width: int = 560, height: int = 260) -> str:
    """Every trial as a point (quality up, size or cost right; a log axis when it spans more than 20x), the
    frontier joined by a line, the recommended trial ringed."""
    points = [(t[x_key], t[objective], t["name"]) for t in trials if t.get(objective) is not None and t.get(x_key)]
    if not points:
        return "<p>no scored trials</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    log = max(xs) / min(xs) > 20
    scale = (lambda x: math.log10(x)) if log else (lambda x: x)
    x0, x1, y0, y1 = scale(min(xs)), scale(max(xs)), min(ys), max(ys)
    left, right, top = 50, width - 150, 10

    def place(x, y):
        return (left + (scale(x) - x0) / ((x1 - x0) or 1) * (right - left),
                top + height - (y - y0) / ((y1 - y0) or 1) * height)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 60}">',
             f'<rect x="{left}" y="{top}" width="{right - left}" height="{height}" fill="none" stroke="#999"/>']
    line = [place(x, y) for x, y, name in sorted(points) if name in front]
    parts.append('<polyline fill="none" stroke="#d62728" stroke-width="1.5" points="'
                 + " ".join(f"{x:.1f},{y:.1f}" for x, y in line) + '"/>')
    for x, y, name in points:
        px, py = place(x, y)
        colour = "#d62728" if name in front else "#888"
        parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{colour}"><title>{html.escape(name)}</title></circle>')
        parts.append(f'<text x="{px + 6:.1f}" y="{py - 4:.1f}" font-size="10">{html.escape(name)}</text>')
        if name == chosen:
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="8" fill="none" stroke="#2ca02c" stroke-width="2"/>')
    parts.append(f'<text x="0" y="{top + 10}" font-size="11">{y1:.3g}</text>'
                 f'<text x="0" y="{top + height}" font-size="11">{y0:.3g}</text>')
    parts.append(f'<text x="{left}" y="{top + height + 16}" font-size="11">{min(xs):.4g}</text>'
                 f'<text x="{right - 40}" y="{top + height + 16}" font-size="11">{max(xs):.4g}</text>')
    parts.append(f'<text x="{left + 80}" y="{top + height + 34}" font-size="11">{html.escape(x_label)}{" (log scale)" if log else ""}; '
                 f'red: the frontier; green ring: recommended</text>')
    parts.append(f'<text x="{left + 4}" y="{top + 12}" font-size="11">{html.escape(objective)}</text></svg>')
    return "".join(parts)


def html_report(data: dict, title: str, notes: list[str]) -> str:
    keys = list(data["trials"][0]["params"]) if data["trials"] else []
    by_name = {trial["name"]: trial for trial in data["trials"]}
    chosen = data["recommended"]["name"] if data["recommended"] else None

    def table(trials):
        rows = _table(trials, keys, data["objective"])
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows[1:])
        return f"<table><tr>{head}</tr>{body}</table>"

    sections = "".join(
        f"<h2>{html.escape(data['objective'])} against {label}</h2>"
        + frontier_svg(data["trials"], key, label, data["objective"], data["frontier"][name], chosen)
        + "<h3>Non-dominated trials</h3>" + table([by_name[n] for n in data["frontier"][name]])
        for name, (key, label) in FRONTIERS.items()
    )
    recommendation = ""
    if data["recommended"]:
        settings = ", ".join(f"{k} {v}" for k, v in data["recommended"]["params"].items())
        recommendation = (f"<p class=rec><b>Recommended: {html.escape(chosen)}</b> ({html.escape(settings)}): "
                          f"{html.escape(data['recommended']['why'])}.</p>")
    notes_html = "".join(f"<p>{html.escape(note)}</p>" for note in notes)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} td:first-child,th:first-child{{text-align:left}}
.rec{{background:#eef8ee;padding:.5em}}</style></head>
<body><h1>{html.escape(title)}</h1>{notes_html}{recommendation}{sections}
<h2>Every trial</h2>{table(data["trials"])}
<p>{html.escape(base_line(data))} Each trial's folder: experiments/NAME/ (its artifact, result.json, samples.png).</p>
</body></html>
"""


def write_sweep_reports(data: dict, out: Path, title: str, notes: list[str]) -> dict[str, Path]:
    paths = {"json": out / "sweep.json", "markdown": out / "report.md", "html": out / "report.html"}
    paths["json"].write_text(json.dumps({"title": title, "notes": notes, **data}, indent=2) + "\n")
    paths["markdown"].write_text(markdown(data, title, notes))
    paths["html"].write_text(html_report(data, title, notes))
    return paths
