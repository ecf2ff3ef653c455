"""`tunelab hyper pretrain`: a weight predictor for toyworld subjects, in three stages.

1. Subject LoRAs: one fixed-basis LoRA (a core per adapted layer) per procedural subject, all trained at once,
   each batch item through its own subject's LoRA, with prior preservation on the base's class images; the
   bases all subjects share are learned with them (--basis-lr), then frozen.
2. The predictor learns to write those cores from a few of the subject's renders (regression).
3. The predictor learns through the diffusion loss of the LoRAs it predicts (HyperDreamBooth's second phase).
Then its predictions are scored on held-out subjects and the predictor is written in fp16 with a model card.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tunelab.config import option
from tunelab.errors import TunelabError
from tunelab.formats.safetensors_io import save_tensors
from tunelab.hyper.batches import adapted_modules, basis_for, batch_loss, draw_batch, prepare_data
from tunelab.hyper.model_card import write_card
from tunelab.hyper.scoring import score_predictions
from tunelab.hyper.stages import run_stage
from tunelab.hyper.subjects import TOKEN, held_out_subjects, training_subjects
from tunelab.lora.weight_predictor import PredictorShape, WeightPredictor, save_predictor
from tunelab.machine import describe
from tunelab.models.family import family_for
from tunelab.models.loading import load_pipeline

PREDICTOR_FILE = "predictor.safetensors"


@dataclass
class HyperRecipe:
    # 144 of the 149 subjects not held out: on the generation-4 base, with 64 the predictor read held-out subjects at
    # 0.30 against 0.47 for its own; with 144 (stage 1 longer, so each subject's LoRA sees as many renders) 0.36 against
    # 0.47 (docs/hyper.md).
    subjects: int = option("procedural subjects to pretrain on", default=144)
    seed: int = option("seed of everything drawn", default=0)
    rank: int = option("rank of the bases (each core is rank x rank)", default=16)
    targets: str = option("the denoiser's layer groups the LoRA adapts, comma-separated: attention, feedforward", default="attention,feedforward")
    renders: int = option("renders of each subject", default=8)
    core_steps: int = option("stage 1: steps of the subjects' LoRAs", default=5000)
    core_batch: int = option("stage 1 and 3: subjects per batch (each with one class image)", default=4)
    core_items: int = option("stage 1: renders of each subject in a batch (a subject's core learns from more at once)", default=4)
    core_lr: float = option("stage 1: learning rate of the cores", default=1e-2)
    basis_lr: float = option("stage 1: learning rate of the bases all subjects share (0: they stay random)", default=1e-3)
    min_snr_gamma: float = option("stage 1 and 3: min-SNR-gamma timestep weights of the diffusion loss (0: uniform)", default=5.0)
    regression_steps: int = option("stage 2: steps of the predictor on the cores", default=800)
    regression_lr: float = option("stage 2: learning rate", default=1e-3)
    diffusion_steps: int = option("stage 3: steps of the predictor through the diffusion loss", default=3000)
    diffusion_lr: float = option("stage 3: learning rate", default=2e-4)
    channels: int = option("the predictor's encoder width", default=32)
    hidden: int = option("the predictor's feature and decoder width", default=256)
    class_images: int = option("the base's class images per shape (prior preservation)", default=16)
    eval_images: int = option("images per subject when scoring", default=8)
    sample_steps: int = option("sampling steps of the class images and of the scoring images", default=20)
    score_subjects: int = option("held-out subjects scored for the model card (at most 16)", default=8)
    checkpoint_every: int = option("steps between checkpoints", default=200)


ZERO_ALLOWED = ("seed", "basis_lr", "min_snr_gamma")  # recipe numbers for which 0 means something (the rest must be positive)


def target_groups(targets: str) -> tuple[str, ...]:
    groups = tuple(part.strip() for part in targets.split(",") if part.strip())
    unknown = [group for group in groups if group not in ("attention", "feedforward")]
    if unknown or not groups:
        raise TunelabError(f"--targets takes attention and/or feedforward, got {targets!r}")
    return groups


def reference_images(data, chosen: list[int], rng: random.Random) -> torch.Tensor:
    """1-5 renders of each chosen subject, the same count for all: (B, N, 3, H, W) in [-1, 1]."""
    count = rng.randint(1, min(5, len(data.renders[0])))
    picked = [[data.renders[index][i] for i in rng.sample(range(len(data.renders[index])), count)] for index in chosen]
    stacked = torch.stack([torch.from_numpy(np.stack(images)) for images in picked])  # (B, N, H, W, 3)
    return stacked.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0


def pretrain(model: str, out: Path, recipe: HyperRecipe, log: Callable[[str], None] = print) -> Path:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps({"model": model, **asdict(recipe)}, indent=2))
    pipeline = load_pipeline(model, seed=recipe.seed)
    family = family_for(pipeline)
    pipeline.set_progress_bar_config(disable=True)
    for name in ("unet", "vae", "text_encoder"):
        getattr(pipeline, name).requires_grad_(False)
    subjects = training_subjects(recipe.subjects, recipe.seed)
    log(f"preparing {len(subjects)} subjects ({recipe.renders} renders each) and the base's class images")
    data = prepare_data(family, subjects, recipe.renders, out / "class_images", recipe.class_images,
                        recipe.sample_steps, recipe.seed)
    groups = target_groups(recipe.targets)
    basis = basis_for(family, recipe.rank, recipe.seed, groups)
    modules = adapted_modules(family, groups)
    pipeline.unet.train()
    count, batch = len(subjects), min(recipe.core_batch, len(subjects))
    gamma = recipe.min_snr_gamma or None

    # Stage 1: every subject's cores, batched; the shared bases learn with them (a random basis of rank r
    # holds much less of a subject than one fitted to what subjects need).
    cores = torch.zeros(count, basis.layers, basis.rank, basis.rank, requires_grad=True)  # (S, L, r, r)
    shared = basis.trainable() if recipe.basis_lr > 0 else []
    optimizer = torch.optim.Adam([{"params": [cores], "lr": recipe.core_lr}]
                                 + ([{"params": shared, "lr": recipe.basis_lr}] if shared else []))

    def core_loss(step: int) -> torch.Tensor:
        rng = random.Random(f"{recipe.seed}/cores/{step}")
        chosen = [index for index in rng.sample(range(count), batch) for _ in range(recipe.core_items)]
        latents, texts, is_prior, owners = draw_batch(data, chosen, rng)
        return batch_loss(family, modules, basis, cores[owners], latents, texts, is_prior, rng.randrange(2**31), gamma)

    run_stage("stage 1/3 subject LoRAs", recipe.core_steps, [cores, *shared], optimizer, core_loss, out / "stage1.pt",
              recipe.checkpoint_every, log)
    basis = basis.frozen()
    targets = cores.detach()
    save_tensors({"cores": targets, **basis.tensors()}, out / "subject_cores.safetensors",
                 {"subjects": json.dumps([s.name for s in subjects])})

    # Stage 2: the predictor regresses the cores.
    torch.manual_seed(recipe.seed)
    predictor = WeightPredictor(PredictorShape(basis.layers, basis.rank, recipe.channels, recipe.hidden))
    scale = targets.pow(2).mean().clamp_min(1e-12)
    parameters = list(predictor.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=recipe.regression_lr, weight_decay=1e-4)

    def regression_loss(step: int) -> torch.Tensor:
        rng = random.Random(f"{recipe.seed}/regression/{step}")
        chosen = rng.sample(range(count), min(32, count))
        return F.mse_loss(predictor(reference_images(data, chosen, rng)), targets[chosen]) / scale

    run_stage("stage 2/3 predictor on the cores", recipe.regression_steps, parameters, optimizer, regression_loss,
              out / "stage2.pt", recipe.checkpoint_every, log)

    # Stage 3: the predictor through the diffusion loss of its LoRAs.
    optimizer = torch.optim.AdamW(parameters, lr=recipe.diffusion_lr, weight_decay=1e-4)

    def diffusion_loss(step: int) -> torch.Tensor:
        rng = random.Random(f"{recipe.seed}/diffusion/{step}")
        chosen = rng.sample(range(count), batch)
        predicted = predictor(reference_images(data, chosen, rng))  # (B, L, r, r)
        latents, texts, is_prior, owners = draw_batch(data, chosen, rng)
        place = {index: position for position, index in enumerate(chosen)}
        return batch_loss(family, modules, basis, predicted[[place[o] for o in owners]], latents, texts, is_prior,
                          rng.randrange(2**31), gamma)

    run_stage("stage 3/3 predictor through the diffusion loss", recipe.diffusion_steps, parameters, optimizer,
              diffusion_loss, out / "stage3.pt", recipe.checkpoint_every, log)
    trained_seconds = time.perf_counter() - started

    pipeline.unet.eval()
    predictor.eval()
    path = save_predictor(out / PREDICTOR_FILE, predictor, basis, {
        "token": TOKEN, "resolution": pipeline.unet.config.sample_size * pipeline.vae_scale_factor,
        "base_model": str(model), "base_model_version": family.base_model_version, "targets": list(groups)})
    log("scoring predicted LoRAs on the held-out subjects")
    seeds = list(range(1000, 1000 + recipe.eval_images))
    held_out = score_predictions(pipeline, predictor, basis, held_out_subjects()[:recipe.score_subjects], seeds,
                                  recipe.sample_steps)
    seen = score_predictions(pipeline, predictor, basis, subjects[:min(8, recipe.score_subjects)], seeds,
                              recipe.sample_steps)
    facts = {"model": str(model), "recipe": asdict(recipe), "subjects": [s.name for s in subjects],
             "held_out": held_out, "seen": seen, "machine": describe(torch.get_num_threads()),
             "train_seconds": trained_seconds, "total_seconds": time.perf_counter() - started,
             "file_bytes": path.stat().st_size, "parameters": sum(p.numel() for p in parameters)}
    (out / "pretraining.json").write_text(json.dumps(facts, indent=2))
    write_card(out, facts)
    log(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); held-out fidelity "
        f"{sum(r['predicted'] for r in held_out) / len(held_out):.3f} (base {sum(r['base'] for r in held_out) / len(held_out):.3f})")
    return path
