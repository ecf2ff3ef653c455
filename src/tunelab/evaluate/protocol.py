"""One evaluation of a (possibly tuned) toyworld model on a subject: which prompts, which seeds, which scores.

The same prompts and seeds for every technique, so their scores and sample grids compare.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunelab.evaluate.metrics import class_preservation, diversity, prompt_fidelity, subject_fidelity
from tunelab.evaluate.sampling import GUIDANCE, STEPS, sample_images
from tunelab.toyworld.subjects import Subject
from tunelab.toyworld.world import BACKGROUND_COLOURS, POSITIONS, World, place, position_phrase, render, world_of_resolution

METRICS = ("subject_fidelity", "prompt_fidelity", "prior_drift", "diversity")


def prompt_variations(noun: str, count: int) -> list[tuple[str, dict[str, str]]]:
    """Prompts that ask for a background or a place, with what each asks for."""
    asks = [(f"a {noun} on a {colour} background", {"background": colour}) for colour in BACKGROUND_COLOURS]
    asks += [(f"a {noun} {position_phrase(where)}", {"position": where}) for where in POSITIONS]
    return [asks[index % len(asks)] for index in range(count)]


def subject_as_asked(subject: Subject, asked: dict[str, str], seed: int, world: World) -> np.ndarray:
    """The subject rendered as a prompt asks (background, place); what is not asked comes from the seed."""
    rng = random.Random(f"{subject.name}/reference/{seed}")
    background = asked.get("background") or rng.choice(BACKGROUND_COLOURS)
    return render(place(rng, subject.look, background, position=asked.get("position"), world=world))


@dataclass
class Evaluation:
    scores: dict[str, float]  # class_preservation rather than prior_drift: drift needs the base's score
    rows: dict[str, tuple[list[str], list[np.ndarray]]]  # grid row name -> (prompts, images)
    seeds: list[int] = field(default_factory=list)  # one per column of every row
    references: dict[str, list[np.ndarray]] = field(default_factory=dict)  # row name -> what its prompts ask, rendered

    def save_images(self, path: Path) -> Path:
        """Prompts, seeds, images and references as one .npz (read back without pickle by `load_images`)."""
        arrays = {"seeds": np.array(self.seeds, dtype=np.int64), "row_names": np.array(list(self.rows))}
        for name, (prompts, images) in self.rows.items():
            arrays[f"{name}_prompts"], arrays[f"{name}_images"] = np.array(prompts), np.stack(images)  # (N, H, W, 3)
            if name in self.references:
                arrays[f"{name}_references"] = np.stack(self.references[name])  # (N, H, W, 3)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)
        return path

    @classmethod
    def load_images(cls, path: Path) -> "Evaluation":
        with np.load(path, allow_pickle=False) as arrays:
            names = [str(name) for name in arrays["row_names"]]
            rows = {name: ([str(p) for p in arrays[f"{name}_prompts"]], list(arrays[f"{name}_images"])) for name in names}
            references = {name: list(arrays[f"{name}_references"]) for name in names if f"{name}_references" in arrays}
            return cls({}, rows, [int(seed) for seed in arrays["seeds"]], references)


def evaluate_subject(pipeline, subject: Subject, identifier: str, images_per_prompt: int = 8, seed: int = 1000,
                     steps: int = STEPS, guidance: float = GUIDANCE, subject_only: bool = False) -> Evaluation:
    """`identifier` names the subject in prompts: its token, or a textual-inversion token. `subject_only`: the subject
    prompt's images and subject fidelity alone (a third of the sampling; the same images and score)."""
    seeds = [seed + index for index in range(images_per_prompt)]
    noun = f"{identifier} {subject.class_word}"

    def images(prompts: list[str]) -> list[np.ndarray]:
        return sample_images(pipeline, prompts, seeds, steps=steps, guidance=guidance)

    subject_prompts = [f"a {noun}"] * images_per_prompt
    subject_images = images(subject_prompts)
    world = world_of_resolution(subject_images[0].shape[1])
    scores = {"subject_fidelity": subject_fidelity(subject_images, subject)}
    rows = {"subject": (subject_prompts, subject_images)}
    references = {"subject": [subject_as_asked(subject, {}, one_seed, world) for one_seed in seeds]}
    if not subject_only:
        varied = prompt_variations(noun, images_per_prompt)
        class_prompts = [subject.class_prompt] * images_per_prompt
        varied_images, class_images = images([p for p, _ in varied]), images(class_prompts)
        scores |= {
            "prompt_fidelity": prompt_fidelity(varied_images, [asked for _, asked in varied]),
            "class_preservation": class_preservation(class_images, subject),
            "diversity": diversity(subject_images),
        }
        rows |= {"prompts": ([p for p, _ in varied], varied_images), "class": (class_prompts, class_images)}
        references["prompts"] = [subject_as_asked(subject, asked, one_seed, world) for (_, asked), one_seed in zip(varied, seeds)]
    return Evaluation({name: round(value, 4) for name, value in scores.items()}, rows, seeds, references)


def sample_prompt(pipeline, prompt: str, images_per_prompt: int = 8, seed: int = 1000, steps: int = STEPS,
                  guidance: float = GUIDANCE) -> Evaluation:
    """A subject with no renderer (a folder of images): the instance prompt's images at the evaluation seeds, no scores."""
    seeds = [seed + index for index in range(images_per_prompt)]
    prompts = [prompt] * images_per_prompt
    return Evaluation({}, {"subject": (prompts, sample_images(pipeline, prompts, seeds, steps=steps, guidance=guidance))}, seeds)
