"""What pretraining draws its batches from, made once: every subject's renders as latents, class images per
shape (the base's own, for prior preservation as the demo's LoRA has it), and the prompts' encodings; and the
loss of a batch whose items each go through their own subject's LoRA."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tunelab.lora.fixed_basis import FixedBasis
from tunelab.lora.modules import adaptable_modules
from tunelab.lora.per_sample import per_sample_loras
from tunelab.toyworld.pretrain import to_pixels
from tunelab.toyworld.subjects import Subject
from tunelab.toyworld.world import WORLD
from tunelab.training.prior import CLASS_IMAGE_PATTERN, ensure_class_images
from tunelab.training.step import diffusion_losses


@dataclass
class SubjectData:
    subjects: list[Subject]
    renders: list[list[np.ndarray]]  # per subject: uint8 (H, W, 3) renders, the predictor's input
    latents: torch.Tensor  # (S, R, C, h, w): the same renders as scaled latents
    class_latents: dict[str, torch.Tensor]  # class word -> (K, C, h, w), the base's images of "a <class>"
    prompts: dict[str, torch.Tensor]  # prompt -> (T, D) text encoding


def adapted_modules(family, groups: tuple[str, ...] = ("attention",)) -> dict[str, torch.nn.Module]:
    """The denoiser's Linear layers in the family's LoRA target groups (key -> Linear): what a predicted LoRA adapts."""
    suffixes = [suffix for group in groups for suffix in family.lora_targets[family.denoiser_name][group]]
    return {key: module for key, module in adaptable_modules(family.pipeline).items()
            if key.startswith(family.denoiser_name + ".") and isinstance(module, torch.nn.Linear)
            and any(key.endswith("." + suffix) for suffix in suffixes)}


def basis_for(family, rank: int, seed: int, groups: tuple[str, ...] = ("attention",)) -> FixedBasis:
    modules = adapted_modules(family, groups)
    return FixedBasis.random({key: tuple(module.weight.shape) for key, module in modules.items()}, rank, seed)


@torch.no_grad()
def encode_renders(family, images: list[np.ndarray], seed: int) -> torch.Tensor:
    return family.encode_images(to_pixels(images), torch.Generator().manual_seed(seed))  # (N, C, h, w)


@torch.no_grad()
def prepare_data(family, subjects: list[Subject], renders: int, class_folder: Path, class_images: int, sample_steps: int,
                 seed: int, world=WORLD) -> SubjectData:
    images = [subject.renders(renders, seed=0, world=world) for subject in subjects]
    latents = torch.stack([encode_renders(family, subject_images, seed) for subject_images in images])  # (S, R, C, h, w)
    class_latents = {}
    resolution = world.resolution
    for word in sorted({subject.class_word for subject in subjects}):
        folder = ensure_class_images(family.pipeline, class_folder / word, f"a {word}", class_images, resolution,
                                     sample_steps, seed, show_progress=False)
        pictures = [np.asarray(Image.open(folder / CLASS_IMAGE_PATTERN.format(index=i)).convert("RGB"))
                    for i in range(class_images)]
        class_latents[word] = encode_renders(family, pictures, seed)
    texts = sorted({s.prompt for s in subjects} | {s.class_prompt for s in subjects})
    encoded = family.encode_prompts(texts)["encoder_hidden_states"]  # (P, T, D)
    return SubjectData(subjects, images, latents, class_latents, dict(zip(texts, encoded)))


def draw_batch(data: SubjectData, chosen: list[int], rng: random.Random) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """For each entry of `chosen` (a subject may come more than once) one of the subject's renders under its
    prompt and one class image under the class prompt:
    (latents (2B, C, h, w), text (2B, T, D), is_prior (2B,), the subject of each item)."""
    latents, texts, owners = [], [], []
    for index in chosen:
        subject = data.subjects[index]
        latents.append(data.latents[index, rng.randrange(data.latents.shape[1])])
        texts.append(data.prompts[subject.prompt])
        owners.append(index)
    for index in chosen:
        subject = data.subjects[index]
        pool = data.class_latents[subject.class_word]
        latents.append(pool[rng.randrange(pool.shape[0])])
        texts.append(data.prompts[subject.class_prompt])
        owners.append(index)
    is_prior = torch.arange(len(owners)) >= len(chosen)
    return torch.stack(latents), torch.stack(texts), is_prior, owners


def batch_loss(family, modules, basis: FixedBasis, cores: torch.Tensor, latents: torch.Tensor, texts: torch.Tensor,
               is_prior: torch.Tensor, seed: int, min_snr_gamma: float | None = None) -> torch.Tensor:
    """The diffusion loss of a batch, item b through the LoRA of cores[b] (B, L, r, r); prior items weigh as
    much as instance ones (the demo's prior_loss_weight 1); timesteps weighted by min-SNR-gamma (None: uniform)."""
    noisy = family.add_noise(latents, 0.0, torch.Generator().manual_seed(seed))
    with per_sample_loras(modules, basis, cores):
        prediction = family.predict(noisy, {"encoder_hidden_states": texts})  # (B, C, h, w)
    loss, _, _ = diffusion_losses(prediction, noisy.target, family.loss_weights(noisy.timesteps, min_snr_gamma), is_prior, 1.0)
    return loss
