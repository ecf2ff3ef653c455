"""The sweep behind `tunelab demo`'s settings: every candidate setting of each technique on every toyworld subject.

Each candidate is the demo's experiment (src/tunelab/comparison/demo.yaml) with some options changed; each
subject is one comparison (`tunelab compare`), so the base is evaluated once per subject and a rerun reuses
finished experiments. The table (markdown, for docs/compare.md) gives each candidate's scores per subject and
the worst subject's, since the demo's settings must show the ranking on every subject, not on one.

    python benchmarks/demo_sweep.py --out /tmp/demo-sweep [--model toyworld] [--images-per-prompt 16] [--parallel 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from tunelab import api
from tunelab.comparison.demo_settings import demo_config
from tunelab.toyworld.subjects import SUBJECTS

# technique -> candidate name -> options changed from demo.yaml ({} = the shipped setting)
CANDIDATES = {
    "lora": {"shipped": {}, "lr2e-3": {"learning_rate": 2.0e-3}, "400 steps": {"steps": 400}},
    "dreambooth": {"shipped": {}, "lr1e-4": {"learning_rate": 1.0e-4}, "400 steps": {"steps": 400}},
    "textual_inversion": {"shipped": {}, "lr0.05": {"learning_rate": 0.05}, "800 steps": {"steps": 800}},
    "hypernetwork": {"shipped": {}, "lr2e-3": {"learning_rate": 2.0e-3}, "400 steps": {"steps": 400}},
}
COLUMNS = ("subject_fidelity", "prompt_fidelity", "prior_drift")


def sweep_config(subject: str, model: str, images_per_prompt: int, candidates: dict) -> dict:
    """The demo's comparison for `subject` with every candidate of every technique as an experiment."""
    demo = demo_config(subject)
    experiments = []
    for experiment in demo.experiments:
        for name, changes in candidates.get(experiment.technique, {}).items():
            experiments.append({"name": f"{experiment.name}/{name}".replace(" ", "-").replace("/", "--"),
                                "technique": experiment.technique, **experiment.training, **changes})
    return {"model": model, "subject": subject, "images_per_prompt": images_per_prompt, "experiments": experiments}


def table(results: dict[str, list[dict]]) -> str:
    """One row per candidate: each subject's subject fidelity, then the worst subject's three scores."""
    subjects = list(results)
    names = [record["name"] for record in results[subjects[0]]]
    header = ["candidate", *[f"{subject} fidelity" for subject in subjects], "worst fidelity", "worst prompt fidelity",
              "worst prior drift", "mean train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        rows = [next(record for record in results[subject] if record["name"] == name) for subject in subjects]
        fidelities = [row.get("subject_fidelity", 0.0) for row in rows]
        cells = [name.replace("--", " / "), *[f"{value:.3f}" for value in fidelities], f"{min(fidelities):.3f}",
                 f"{min(row.get('prompt_fidelity', 0.0) for row in rows):.3f}",
                 f"{max(row.get('prior_drift', 0.0) for row in rows):+.3f}",
                 f"{sum(row['train_seconds'] for row in rows) / len(rows):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="toyworld")
    parser.add_argument("--images-per-prompt", type=int, default=16)
    parser.add_argument("--subjects", nargs="+", default=list(SUBJECTS))
    parser.add_argument("--parallel", type=int, help="experiments at once, each on its share of the cores (default: one at a time)")
    parser.add_argument("--candidates", type=Path, help="YAML of technique -> candidate -> changed options (default: CANDIDATES)")
    args = parser.parse_args()
    candidates = yaml.safe_load(args.candidates.read_text()) if args.candidates else CANDIDATES
    results, started = {}, time.time()
    for subject in args.subjects:
        out = args.out / subject
        api.compare(sweep_config(subject, args.model, args.images_per_prompt, candidates), out=out,
                    title=f"demo sweep: {subject}", parallel=args.parallel)
        results[subject] = json.loads((out / "results.json").read_text())
    print(table(results))
    print(f"\n{time.time() - started:.0f} s in all")


if __name__ == "__main__":
    main()
