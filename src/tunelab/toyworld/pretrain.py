"""toyworld's base model and the seeded recipe that pretrains it on rendered scenes.

Two stages, as Stable Diffusion was built: a small KL autoencoder (32 px -> 8x8x4 latents),
then the UNet and CLIP text encoder together on cached latents with 10% empty captions
(so classifier-free guidance works). The denoising objective, noise and min-SNR weights
are the trainer's own (models/sd.py), so the base is trained the way it is later tuned.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tunelab.toyworld.world import caption, random_scene, render

HELD_OUT = (  # (shape, colour, background) never shown in pretraining; the base's scores are measured on them
    ("circle", "red", "gray"),
    ("square", "green", "black"),
    ("triangle", "blue", "white"),
    ("cross", "yellow", "gray"),
    ("circle", "white", "blue"),
    ("triangle", "yellow", "black"),
)
TEXT_LENGTH = 20  # tokens per prompt: toyworld captions are short; shorter context = faster attention


@dataclass
class Recipe:
    seed: int = 0
    scenes: int = 20000  # the fixed pretraining set
    vae_steps: int = 1200
    vae_batch: int = 32
    vae_learning_rate: float = 1e-3
    steps: int = 5000
    batch: int = 32
    learning_rate: float = 5e-4
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    eval_every: int = 1000
    eval_images: int = 48


def build_base(seed: int = 0):
    """The toyworld pipeline with random weights (the recipe's starting point)."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from tunelab.models.presets import sd_pipeline, tiny_clip
    from tunelab.models.tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(model_max_length=TEXT_LENGTH)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),  # 32 px -> 8x8 latents
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    torch.manual_seed(seed + 1)
    text_encoder = tiny_clip(CLIPTextModel, tokenizer, hidden_size=64, positions=TEXT_LENGTH)
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(64, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1
    )
    return sd_pipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def pretraining_scenes(count: int, seed: int) -> list:
    rng = random.Random(seed)
    scenes = []
    while len(scenes) < count:
        scene = random_scene(rng)
        if (scene.look.shape, scene.look.colours[0], scene.background) not in HELD_OUT:
            scenes.append(scene)
    return scenes


def to_pixels(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images -> (B, 3, H, W) floats in [-1, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _learning_rate(step: int, recipe_steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine down to a tenth."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(recipe_steps - warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_autoencoder(vae, scenes, recipe: Recipe, log) -> None:
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_learning_rate)
    rng = np.random.default_rng(recipe.seed)
    vae.train()
    for step in range(recipe.vae_steps):
        for group in optimizer.param_groups:
            group["lr"] = recipe.vae_learning_rate * _learning_rate(step, recipe.vae_steps, 50)
        pixels = to_pixels([render(scenes[i]) for i in rng.integers(0, len(scenes), recipe.vae_batch)])  # (B, 3, 32, 32)
        posterior = vae.encode(pixels).latent_dist
        latents = posterior.sample(generator)  # (B, 4, 8, 8)
        reconstruction = vae.decode(latents).sample
        # A tiny KL term keeps the latent Gaussian-shaped without blurring the flat colours.
        loss = torch.nn.functional.mse_loss(reconstruction, pixels) + 1e-6 * posterior.kl().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log(step, "autoencoder", loss.item())
    vae.eval()


@torch.no_grad()
def encode_scenes(vae, scenes, batch: int = 256) -> torch.Tensor:
    """The pretraining set's latent means, scaled to unit variance: (N, 4, 8, 8); sets the VAE's scaling factor."""
    means = [vae.encode(to_pixels([render(s) for s in scenes[i : i + batch]])).latent_dist.mean for i in range(0, len(scenes), batch)]
    latents = torch.cat(means)
    scaling = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling)
    return latents * scaling


def train_denoiser(pipeline, scenes, latents: torch.Tensor, recipe: Recipe, log, evaluate=None) -> None:
    from tunelab.models.sd import StableDiffusionFamily

    family = StableDiffusionFamily(pipeline)
    modules = [pipeline.unet, pipeline.text_encoder]
    parameters = [p for module in modules for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.learning_rate, weight_decay=0.01)
    rng = random.Random(recipe.seed + 1)
    generator = torch.Generator().manual_seed(recipe.seed + 2)
    for step in range(recipe.steps):
        for module in modules:
            module.train()
        for group in optimizer.param_groups:
            group["lr"] = recipe.learning_rate * _learning_rate(step, recipe.steps, recipe.warmup_steps)
        indices = [rng.randrange(len(scenes)) for _ in range(recipe.batch)]
        captions = ["" if rng.random() < recipe.caption_dropout else caption(scenes[i], rng) for i in indices]
        batch = family.add_noise(latents[indices], 0.0, generator)
        prediction = family.predict(batch, family.encode_prompts(captions))
        per_sample = ((prediction.float() - batch.target.float()) ** 2).mean(dim=(1, 2, 3))  # (B,)
        loss = (per_sample * family.loss_weights(batch.timesteps, recipe.min_snr_gamma)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log(step, "denoiser", loss.item())
        if evaluate and recipe.eval_every and (step + 1) % recipe.eval_every == 0:
            for module in modules:
                module.eval()
            evaluate(step + 1)


def pretrain(out: Path, recipe: Recipe, progress=None) -> dict:
    """Run the recipe, save the pipeline (fp16 weights) to `out`, return the model card's facts."""
    from tunelab.evaluate.base_scores import measure_base

    torch.manual_seed(recipe.seed)
    pipeline = build_base(recipe.seed)
    scenes = pretraining_scenes(recipe.scenes, recipe.seed)
    history: list[dict] = []
    started = time.time()

    def log(step, stage, loss):
        if progress:
            progress(stage, step, loss)

    def evaluate(step):
        scores = measure_base(pipeline, count=recipe.eval_images, seed=recipe.seed)
        history.append({"step": step, "seconds": round(time.time() - started, 1), **scores})
        if progress:
            progress("eval", step, scores)

    train_autoencoder(pipeline.vae, scenes, recipe, log)
    autoencoder_seconds = time.time() - started
    latents = encode_scenes(pipeline.vae, scenes)
    train_denoiser(pipeline, scenes, latents, recipe, log, evaluate)
    seconds = time.time() - started
    out.mkdir(parents=True, exist_ok=True)
    pipeline.to(torch.float16).save_pretrained(out, safe_serialization=True)
    facts = {
        "recipe": asdict(recipe),
        "held_out": [list(combination) for combination in HELD_OUT],
        "autoencoder_seconds": round(autoencoder_seconds, 1),
        "total_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "history": history,
    }
    (out / "pretraining.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts
