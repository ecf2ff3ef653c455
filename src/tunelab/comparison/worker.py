"""One experiment of a comparison in its own process: train, measure, evaluate, write result.json.

A process per experiment makes peak memory the experiment's own (process RSS on CPU, the
CUDA allocator's peak on a GPU) and keeps one run's state out of the next.
Run as `python -m tunelab.comparison.worker SPEC_JSON` (the spec itself, as text).
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tunelab.evaluate.dreambench_protocol import Embedders, evaluate_with_embedders
from tunelab.evaluate.image_folders import training_images
from tunelab.evaluate.protocol import evaluate_subject, sample_prompt
from tunelab.evaluate.validation_scores import validation_scores
from tunelab.generation.session import GenerateOptions, prepare
from tunelab.methods import method_class
from tunelab.process import quiet_libraries, run_guarded
from tunelab.toyworld.subjects import SUBJECTS
from tunelab.training.loop import train
from tunelab.training.prepare import prepare_run


def _peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _loss_curve(log_dir: Path, points: int = 200) -> list[tuple[int, float]]:
    """(step, loss) from the run's TensorBoard log (accelerate writes it a folder down), thinned to at most `points`."""
    for folder in sorted({path.parent for path in log_dir.rglob("events.out.tfevents*")}):
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        if "loss" in events.Tags().get("scalars", []):
            curve = [(event.step, event.value) for event in events.Scalars("loss")]
            return curve[:: max(1, len(curve) // points)]
    return []


def artifact_bytes(artifact: Path) -> int:
    """Size on disk of a file, or of every file in a folder (a DreamBooth pipeline)."""
    if artifact.is_dir():
        return sum(path.stat().st_size for path in artifact.rglob("*") if path.is_file())
    return artifact.stat().st_size


def train_experiment(spec: dict) -> dict:
    out = Path(spec["out"])
    run = prepare_run(spec["technique"], spec["training"])
    options, method = run.options, run.method
    started = time.perf_counter()
    artifact = train(options, method, run.resolved, run.family_options, validation_metrics=validation_scores(options, method))
    seconds = time.perf_counter() - started
    trainable = method.learned_parameter_count()
    return {
        "train_seconds": round(seconds, 2),
        "steps": options.steps,
        "steps_per_second": round(options.steps / seconds, 3),
        "peak_memory_mb": round(_peak_memory_mb(spec["device"]), 1),
        "trainable_params": int(trainable),
        "artifact": str(artifact),
        "artifact_bytes": artifact_bytes(Path(artifact)),
        "loss_curve": _loss_curve(out / "logs"),
    }


def evaluate_experiment(spec: dict, artifact: str | None) -> dict:
    """Scores and evaluation images of the model with the experiment's artifact attached (the base without one).
    The images are kept for the report's grids (comparison/report_images.py), which set each beside the base's."""
    attach = method_class(spec["technique"]).generate_options(Path(artifact), spec["identifier"]) if artifact else {}
    return evaluate_session(evaluation_session(spec, attach), spec)


def evaluation_session(spec: dict, attach: dict):
    """The spec's model, loaded for evaluation images, with these generate options' artifacts attached (`attach`:
    a technique's `generate_options`, or several joined: `--lora A --lora B`)."""
    return prepare(GenerateOptions(**{"model": spec["model"], "prompt": "", "out": "", "sampler": "dpm++_2m",
                                      "device": spec["device"], **attach}))


def evaluate_session(session, spec: dict, subject_only: bool = False) -> dict:
    """The evaluation of `evaluate_experiment` on a prepared session; its images go to the spec's `out`.
    `subject_only`: on a toyworld subject, its subject prompt and fidelity alone."""
    evaluation = spec["evaluation"]
    sampling = (evaluation["images_per_prompt"], evaluation["seed"], evaluation["sample_steps"], evaluation["guidance"])
    if "dreambench" in evaluation:  # CLIP/DINO given: DreamBench's metrics, for any subject
        dreambench = evaluation["dreambench"]
        result = evaluate_with_embedders(session.pipeline, dreambench["subject_noun"], dreambench["prompt_set"],
                                         training_images(spec["training"]["images"]),
                                         Embedders(dreambench["clip"], dreambench["dino"]), *sampling)
    elif spec["subject"] in SUBJECTS:
        result = evaluate_subject(session.pipeline, SUBJECTS[spec["subject"]], spec["identifier"], *sampling,
                                  subject_only=subject_only)
    else:  # a folder subject: no renderer, no quality metrics; its prompt's images still show what was learned
        result = sample_prompt(session.pipeline, spec["training"]["prompt"], *sampling)
    kept = result.save_images(Path(spec["out"]) / "evaluation.npz")
    return {**result.scores, "evaluation_images": str(kept),
            "sample_prompts": {row: list(dict.fromkeys(prompts)) for row, (prompts, _) in result.rows.items()}}


def run_spec(spec: dict) -> dict:
    # When and on how many threads it ran: experiments may run side by side (comparison/runner.py).
    result = {"name": spec["name"], "technique": spec["technique"], "fingerprint": spec["fingerprint"],
              "torch_threads": torch.get_num_threads(), "started_at": time.time()}
    if spec["technique"] == "base":
        result |= {"train_seconds": 0.0, "steps": 0, "steps_per_second": None, "peak_memory_mb": 0.0,
                   "trainable_params": 0, "artifact": None, "artifact_bytes": 0, "loss_curve": []}
    else:
        result |= train_experiment(spec)
    result |= evaluate_experiment(spec, result["artifact"])
    return result | {"ended_at": time.time()}


def run_module(module: str, spec: dict) -> int:
    """`python -m MODULE SPEC_JSON` in a process of its own (a study after the experiments); its exit status."""
    return subprocess.run([sys.executable, "-m", module, json.dumps(spec)]).returncode


def main(argv: list[str], run=run_spec) -> int:
    """Run `run(spec)` on the spec given as text and write its result file (the precision study runs this way too)."""
    quiet_libraries()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    spec = json.loads(argv[0])

    def work():
        result = run(spec)
        target = Path(spec["result"])
        partial = target.with_suffix(".partial")
        partial.write_text(json.dumps(result, indent=2) + "\n")
        partial.replace(target)  # a result file exists only when complete

    return run_guarded(work)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
