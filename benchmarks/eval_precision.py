"""How much the demo's scores move between two evaluations of the same trained artifacts with other seeds.

Takes a finished comparison (e.g. `tunelab demo --out DIR`), evaluates every experiment's artifact again at two
evaluation seed sets and each number of images per prompt, and prints, per metric, the largest difference
between the two seed sets over the experiments (prior drift measured against the base at the same seeds, as
the comparison does). The demo's evaluation is precise enough when every difference is below 0.05.

    python benchmarks/eval_precision.py --compare DIR [--seeds 1000 5000] [--images-per-prompt 16 32] [--sample-steps 20]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

from tunelab.comparison.run import prior_drift
from tunelab.comparison.worker import evaluate_experiment

METRICS = ("subject_fidelity", "prompt_fidelity", "prior_drift", "diversity")


def evaluate_all(specs: list[tuple[dict, str | None]], seed: int, images_per_prompt: int, sample_steps: int,
                 scratch: Path) -> dict[str, dict]:
    """Scores of every experiment (base first) at these evaluation settings, prior drift against the base."""
    scores = {}
    for spec, artifact in specs:
        spec = copy.deepcopy(spec)
        spec["out"] = str(scratch / spec["name"] / f"{seed}-{images_per_prompt}-{sample_steps}")
        spec["evaluation"] |= {"seed": seed, "images_per_prompt": images_per_prompt, "sample_steps": sample_steps}
        scores[spec["name"]] = evaluate_experiment(spec, artifact)
    base = scores[specs[0][0]["name"]]
    for record in scores.values():
        record["prior_drift"] = prior_drift(base, record)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", type=Path, required=True, help="a finished comparison's folder")
    parser.add_argument("--seeds", type=int, nargs=2, default=[1000, 5000])
    parser.add_argument("--images-per-prompt", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--sample-steps", type=int, default=None, help="sampler steps (default: the comparison's own)")
    args = parser.parse_args()
    folders = sorted((args.compare / "experiments").iterdir(), key=lambda folder: folder.name != "base")
    specs = []
    for folder in folders:
        spec, result = (json.loads((folder / name).read_text()) for name in ("spec.json", "result.json"))
        specs.append((spec, result["artifact"]))
    lines = ["| images per prompt | seconds per evaluation | " + " | ".join(f"max diff {m}" for m in METRICS) + " |",
             "|" + "---|" * (len(METRICS) + 2)]
    detail = {}
    steps = args.sample_steps or specs[0][0]["evaluation"]["sample_steps"]
    with tempfile.TemporaryDirectory() as scratch:
        for count in args.images_per_prompt:
            started = time.perf_counter()
            first, second = (evaluate_all(specs, seed, count, steps, Path(scratch)) for seed in args.seeds)
            seconds = (time.perf_counter() - started) / (2 * len(specs))
            differences = {metric: max(abs(first[name][metric] - second[name][metric]) for name in first) for metric in METRICS}
            detail[count] = {"first": first, "second": second}
            lines.append(f"| {count} | {seconds:.1f} | " + " | ".join(f"{differences[m]:.3f}" for m in METRICS) + " |")
            print(lines[-1], flush=True)
    print("\n".join(lines))
    for count, runs in detail.items():
        for name in runs["first"]:
            row = [f"{runs['first'][name][m]:.3f}/{runs['second'][name][m]:.3f}" for m in METRICS]
            print(f"{count:>3} {name:<20} " + "  ".join(row))


if __name__ == "__main__":
    main()
