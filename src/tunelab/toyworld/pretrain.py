"""toyworld's base model and the seeded recipe that pretrains it on rendered scenes.

Two stages, as Stable Diffusion was built: a small KL autoencoder, then the UNet and CLIP
text encoder together on cached latents with 10% empty captions (so classifier-free guidance
works). The denoising objective, noise and min-SNR weights are the trainer's own (models/sd.py),
so the base is trained the way it is later tuned. A recipe may instead continue a base and retrain its decoder
alone (`decoder_only`): the encoder, and so every latent the denoiser learned, stays as it was.

Each world generation has its own architecture (`build_base`) and default recipe (`RECIPES`).
A run can write checkpoints (weights, optimizer, every random state, step) and resume from
them; the resumed run ends with the same weights as one that was never stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextModel

from tunelab.errors import TunelabError
from tunelab.machine import describe
from tunelab.models.loading import load_pipeline
from tunelab.models.presets import sd_pipeline, tiny_clip
from tunelab.models.sd import StableDiffusionFamily
from tunelab.models.tokenizer import build_clip_tokenizer
from tunelab.toyworld.subjects import SUBJECTS
from tunelab.toyworld.world import HELD_OUT, PALETTE, PATTERNS, SHAPES, WORLDS, Look, World, caption, place, random_scene, render

TEXT_LENGTH = 20  # tokens per prompt: toyworld captions are short; shorter context = faster attention
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    scenes: int = 20000  # the fixed pretraining set
    vae_steps: int = 1200
    vae_batch: int = 32
    vae_learning_rate: float = 1e-3
    vae_crop: int = 0  # train the autoencoder on this square around the object (0: whole images); it is convolutional
    steps: int = 5000
    batch: int = 32
    learning_rate: float = 5e-4
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    eval_every: int = 1000
    eval_images: int = 48
    generation: int = 1  # which toyworld (world.WORLDS): image size, placement, captions, architecture
    autoencoder_generation: int = 0  # the world whose scenes the autoencoder learns from (0: `generation`'s)
    continues: int = 0  # the generation whose pretrained base the run starts from (`pretrain(start=...)`); 0: from scratch
    decoder_only: bool = False  # the autoencoder stage trains the decoder alone: the latents, and so the denoiser, stay valid
    decoder_noise: float = 0.0  # std of Gaussian noise on the latents the decoder learns to decode, in the denoiser's (scaled) units


# Recipe fields a generation fixes, not a command-line flag: which base it continues (--from names the folder) and
# what of that base it trains.
GENERATION_OWN = ("continues", "decoder_only")

RECIPES = {
    1: Recipe(),
    # Generation 2's autoencoder trains longer, on crops (4x cheaper): at 1500 steps it still lost a third of
    # the bullseye's rings (docs/toyworld.md); the denoiser needs more steps for 4x the latent positions.
    # Min-SNR weighting is off: under v-prediction it would give the pure-noise step (SNR 0) no weight at all.
    2: Recipe(generation=2, vae_steps=4000, vae_batch=32, vae_learning_rate=2e-3, vae_crop=32, steps=12000, warmup_steps=300,
              min_snr_gamma=0.0),
    # Generation 3: generation 2's autoencoder stage as it is (32 px crops of generation-2 scenes: the same
    # autoencoder, bit for bit), then a denoiser on 8x8 latents, where generation 1's UNet learned shapes in
    # 5000 steps and generation 2's 16x16 one had not after 7000 (docs/toyworld.md).
    # Its loss weights cap each step's weight in x0 terms at 5 (`pretraining_loss_weights`), as generation 1's min-SNR 5
    # did: uniform v-prediction weights give nearly clean steps SNR + 1 times the weight, and generation 2's run
    # (uniform) read shapes at chance after 8000 steps while its epsilon / min-SNR-5 pilot was learning them.
    # 6000 steps (the shipped base) read shape / colour / background / size / position 0.78 / 0.94 / 0.94 / 0.94 / 0.90
    # on 480 held-out images; a 9000-step run read 0.86 / 0.91 / 0.97 / 0.78 / 0.77: shapes gained, size and position
    # lost, so the longer schedule is not the answer (docs/toyworld.md).
    3: Recipe(generation=3, autoencoder_generation=2, vae_steps=4000, vae_batch=32, vae_learning_rate=2e-3, vae_crop=32,
              steps=6000, warmup_steps=300, min_snr_gamma=5.0),
    # Generation 4 continues a generation-3 base on scenes half of whose objects are two-coloured patterns: its
    # autoencoder and latent scale are generation 3's as they are (no autoencoder steps), the denoiser learns the
    # patterns and the reserved colours (docs/toyworld.md, "Generation 4").
    4: Recipe(generation=4, continues=3, autoencoder_generation=2, vae_steps=0, vae_batch=32, vae_learning_rate=2e-3,
              vae_crop=32, steps=2000, learning_rate=2.5e-4, warmup_steps=100, min_snr_gamma=5.0),
    # Generation 5 continues a generation-4 base on new scenes of the same world with shorter captions. 1000 steps:
    # a 3000-step run read every held-out attribute at 0.90-0.96 on 48 images at step 1000, then lost background and
    # position words (0.83 / 0.77 on 480 images at step 3000; docs/toyworld.md, "Generation 5").
    5: Recipe(seed=5, generation=5, continues=4, autoencoder_generation=2, vae_steps=0, vae_batch=32,
              vae_learning_rate=2e-3, vae_crop=32, steps=1000, learning_rate=2.5e-4, warmup_steps=100, min_snr_gamma=5.0,
              eval_every=500),
    # Generation 6 keeps generation 5's encoder, latent scale, UNet and text encoder bit for bit and trains only the
    # decoder, on whole generation-6 images, with noise on the latents it decodes: a decoder trained on the encoder's
    # latents alone reconstructed better but drew LoRA, Textual Inversion and hypernetwork samples worse; with noise
    # of 0.1 LoRA's and DreamBooth's bullseye samples read 0.05-0.09 better (docs/toyworld.md, "Generation 6").
    6: Recipe(seed=6, generation=6, continues=5, decoder_only=True, decoder_noise=0.1, vae_steps=5000, vae_batch=32,
              vae_learning_rate=1e-3, vae_crop=0, steps=0, eval_every=0),
}


def build_base(seed: int = 0, generation: int = 1):
    """The toyworld pipeline of a generation with random weights (the recipe's starting point)."""
    tokenizer = build_clip_tokenizer(model_max_length=TEXT_LENGTH)
    world = WORLDS[generation]
    torch.manual_seed(seed)
    if generation == 1:  # 32 px -> 8x8x4 latents
        vae_channels, unet_channels = (16, 32, 64), (64, 128)
        down_blocks = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
        up_blocks = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    elif generation in (3, 4, 5, 6):  # 32 px -> 8x8x4 latents, generation 1's UNet with a 2x2 level below it (for position words)
        vae_channels, unet_channels = (16, 32, 64), (64, 128, 128)
        down_blocks, up_blocks = ("CrossAttnDownBlock2D",) * 3, ("CrossAttnUpBlock2D",) * 3
    else:  # 64 px -> 16x16x4 latents; no attention at 16x16, where it would cost most
        # Down to 2x2, where each cell knows its corner from the zero padding: a path from "on the left" to the
        # left half. With the bottom at 4x4 (and in generation 1) the object's place followed the noise, never the words.
        vae_channels, unet_channels = (16, 32, 64), (32, 64, 128, 128)
        down_blocks = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
        up_blocks = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        block_out_channels=vae_channels,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=world.resolution,
    )
    torch.manual_seed(seed + 1)
    text_encoder = tiny_clip(CLIPTextModel, tokenizer, hidden_size=64, positions=TEXT_LENGTH)
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(
        sample_size=world.resolution // 2 ** (len(vae_channels) - 1),
        block_out_channels=unet_channels,
        layers_per_block=1,
        down_block_types=down_blocks,
        up_block_types=up_blocks,
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    if generation == 1:
        scheduler = DPMSolverMultistepScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1
        )
    else:
        # Zero terminal SNR (Lin et al. 2024): SD's schedule leaves 6.8% of the image in its noisiest training
        # input, and at 16x16 latents the model learned to read the background from that leftover, which pure
        # noise at sampling time lacks (backgrounds came out in colours never trained). With none left, the
        # last step must come from the caption; that needs v-prediction and trailing timesteps.
        scheduler = DPMSolverMultistepScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
            rescale_betas_zero_snr=True, timestep_spacing="trailing", steps_offset=1,  # the pipeline insists on 1; trailing ignores it
        )
    return sd_pipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def pretraining_loss_weights(family, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights (B,). Epsilon: the trainer's min-SNR-gamma. v-prediction: each step's weight in x0
    terms (SNR + 1) capped at gamma, i.e. min(1, gamma / (SNR + 1)) on the v loss. The usual v-prediction min-SNR,
    min(SNR, gamma) / (SNR + 1), gives the pure-noise step of a zero-terminal-SNR schedule no weight, and that step
    is where the caption alone must set the background and the place."""
    if not gamma or family.prediction_type != "v_prediction":
        return family.loss_weights(timesteps, gamma)
    alphas = family.noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]  # (B,)
    snr_plus_one = 1.0 / (1.0 - alphas)  # SNR + 1 = alpha / (1 - alpha) + 1
    return torch.clamp(gamma / snr_plus_one, max=1.0)


def pretraining_scenes(count: int, seed: int, world: World = WORLDS[1]) -> list:
    rng = random.Random(seed)
    scenes = []
    while len(scenes) < count:
        scene = random_scene(rng, world)
        if not any((scene.look.shape, colour, scene.background) in HELD_OUT for colour in scene.look.colours):
            scenes.append(scene)
    return scenes


def autoencoder_scenes(count: int, seed: int, world: World) -> list:
    """Generation 2's autoencoder data: any shape, pattern and palette colours, so the autoencoder can
    draw what subjects are made of (as SD's autoencoder draws any image); never a subject's own look.
    The denoiser still sees base colours only."""
    rng = random.Random(f"autoencoder/{seed}")
    subject_looks = {subject.look for subject in SUBJECTS.values()}
    names = tuple(PALETTE)
    scenes = []
    while len(scenes) < count:
        pattern = rng.choice(PATTERNS)
        look = Look(rng.choice(SHAPES), tuple(rng.sample(names, 1 if pattern == "solid" else 2)), pattern)
        if look not in subject_looks:
            background = rng.choice([name for name in names if name not in look.colours])
            scenes.append(place(rng, look, background, world=world))
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


@torch.no_grad()
def encode_scenes(vae, scenes, batch: int = 256, keep_scaling: bool = False) -> torch.Tensor:
    """The pretraining set's latent means, scaled: (N, 4, h, w). A new autoencoder's scaling factor is set to give them
    unit variance; with `keep_scaling` (a run continuing a base) the VAE's own factor stays, as its denoiser learned it."""
    vae.eval()
    means = [vae.encode(to_pixels([render(s) for s in scenes[i : i + batch]])).latent_dist.mean for i in range(0, len(scenes), batch)]
    latents = torch.cat(means)
    if not keep_scaling:
        vae.register_to_config(scaling_factor=1.0 / latents.std().item())
    return latents * vae.config.scaling_factor


class Stopped(Exception):
    """Raised by a progress callback to stop a run early (its last checkpoint stays)."""


class Pretraining:
    """One run of the recipe: the models, optimizers, random states and where it stands."""

    def __init__(self, recipe: Recipe, start=None):
        """`start`: the pipeline of the base the recipe continues (recipe.continues), None from scratch."""
        self.recipe = recipe
        self.world = WORLDS[recipe.generation]
        torch.manual_seed(recipe.seed)
        self.pipeline = build_base(recipe.seed, recipe.generation)
        if start is not None:
            for name in ("vae", "unet", "text_encoder"):
                getattr(self.pipeline, name).load_state_dict(getattr(start, name).state_dict())
            self.pipeline.vae.register_to_config(scaling_factor=float(start.vae.config.scaling_factor))
        self.scenes = pretraining_scenes(recipe.scenes, recipe.seed, self.world)
        autoencoder_world = WORLDS[recipe.autoencoder_generation or recipe.generation]
        self.autoencoder_set = self.scenes if recipe.generation == 1 else autoencoder_scenes(recipe.scenes, recipe.seed, autoencoder_world)
        self.family = StableDiffusionFamily(self.pipeline)
        self.denoiser_modules = [self.pipeline.unet, self.pipeline.text_encoder]
        self.denoiser_parameters = [p for module in self.denoiser_modules for p in module.parameters()]
        self.vae_optimizer = torch.optim.AdamW(self.autoencoder_parameters(), lr=recipe.vae_learning_rate)
        self.optimizer = torch.optim.AdamW(self.denoiser_parameters, lr=recipe.learning_rate, weight_decay=0.01)
        self.vae_generator = torch.Generator().manual_seed(recipe.seed)
        self.vae_rng = np.random.default_rng(recipe.seed)
        self.rng = random.Random(recipe.seed + 1)
        self.generator = torch.Generator().manual_seed(recipe.seed + 2)
        self.stage, self.step = "autoencoder", 0  # the next step to run
        self.seconds = {"autoencoder": 0.0, "denoiser": 0.0}
        self.history: list[dict] = []
        self.autoencoder_scores: dict = {}
        self.latents: torch.Tensor | None = None

    def autoencoder_parameters(self) -> list:
        """What the autoencoder stage trains: the whole VAE, or (decoder_only) what turns latents into pixels."""
        vae = self.pipeline.vae
        if self.recipe.decoder_only:
            return [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
        return list(vae.parameters())

    def encode_latents(self) -> None:
        """Cache the denoiser's latents; a run continuing a base keeps the scaling factor its denoiser learned."""
        if self.recipe.continues and not self.recipe.steps:  # no denoiser step reads them, and the scale is the base's
            return
        self.latents = encode_scenes(self.pipeline.vae, self.scenes, keep_scaling=bool(self.recipe.continues))

    def autoencoder_step(self) -> float:
        recipe, vae = self.recipe, self.pipeline.vae
        vae.train()
        for group in self.vae_optimizer.param_groups:
            group["lr"] = recipe.vae_learning_rate * _learning_rate(self.step, recipe.vae_steps, 50)
        picks = self.vae_rng.integers(0, len(self.autoencoder_set), recipe.vae_batch)
        pixels = to_pixels([self._autoencoder_image(self.autoencoder_set[i]) for i in picks])  # (B, 3, H, W) or cropped
        with torch.set_grad_enabled(not recipe.decoder_only):  # a frozen encoder keeps the denoiser's latents
            posterior = vae.encode(pixels).latent_dist
            latents = posterior.sample(self.vae_generator)  # (B, 4, h, w)
        if recipe.decoder_noise:  # a denoiser's latents are near, not on, what the encoder makes
            noise = torch.randn(latents.shape, generator=self.vae_generator)  # (B, 4, h, w)
            latents = latents + noise * recipe.decoder_noise / vae.config.scaling_factor
        reconstruction = vae.decode(latents).sample
        # A tiny KL term keeps the latent Gaussian-shaped without blurring the flat colours.
        loss = torch.nn.functional.mse_loss(reconstruction, pixels) + 1e-6 * posterior.kl().mean()
        loss.backward()
        self.vae_optimizer.step()
        self.vae_optimizer.zero_grad(set_to_none=True)
        vae.eval()
        return loss.item()

    def _autoencoder_image(self, scene) -> np.ndarray:
        """The scene's render, or a crop of it around the object (the object's detail is what is hard to encode)."""
        image, crop = render(scene), self.recipe.vae_crop
        if not crop or crop >= image.shape[0]:
            return image
        x0, y0, side = scene.box
        shift_x, shift_y = self.vae_rng.integers(-crop // 8, crop // 8 + 1, 2)
        left = int(np.clip(x0 + side // 2 - crop // 2 + shift_x, 0, image.shape[1] - crop))
        top = int(np.clip(y0 + side // 2 - crop // 2 + shift_y, 0, image.shape[0] - crop))
        return image[top : top + crop, left : left + crop]

    def denoiser_step(self) -> float:
        recipe, family = self.recipe, self.family
        for module in self.denoiser_modules:
            module.train()
        for group in self.optimizer.param_groups:
            group["lr"] = recipe.learning_rate * _learning_rate(self.step, recipe.steps, recipe.warmup_steps)
        indices = [self.rng.randrange(len(self.scenes)) for _ in range(recipe.batch)]
        captions = ["" if self.rng.random() < recipe.caption_dropout else caption(self.scenes[i], self.rng) for i in indices]
        batch = family.add_noise(self.latents[indices], 0.0, self.generator)
        prediction = family.predict(batch, family.encode_prompts(captions))
        per_sample = ((prediction.float() - batch.target.float()) ** 2).mean(dim=(1, 2, 3))  # (B,)
        loss = (per_sample * pretraining_loss_weights(family, batch.timesteps, recipe.min_snr_gamma)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.denoiser_parameters, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for module in self.denoiser_modules:
            module.eval()
        return loss.item()

    def state(self) -> dict:
        return {
            "recipe": asdict(self.recipe),
            "stage": self.stage,
            "step": self.step,
            "seconds": dict(self.seconds),
            "history": list(self.history),
            "autoencoder_scores": dict(self.autoencoder_scores),
            "scaling_factor": float(self.pipeline.vae.config.scaling_factor),
            "models": {name: getattr(self.pipeline, name).state_dict() for name in ("vae", "unet", "text_encoder")},
            "optimizers": {"vae": self.vae_optimizer.state_dict(), "denoiser": self.optimizer.state_dict()},
            "random": {
                "torch": torch.get_rng_state(),
                "vae_generator": self.vae_generator.get_state(),
                "generator": self.generator.get_state(),
                "vae_rng": self.vae_rng.bit_generator.state,
                "rng": self.rng.getstate(),
            },
        }

    def load_state(self, state: dict) -> None:
        saved = {**asdict(Recipe()), "autoencoder_generation": 0, **state["recipe"]}  # fields added since keep their defaults
        if saved != asdict(self.recipe):
            raise TunelabError(f"the checkpoint was made by another recipe ({state['recipe']}); resume with the same options")
        self.stage, self.step = state["stage"], state["step"]
        self.seconds, self.history = dict(state["seconds"]), list(state["history"])
        self.autoencoder_scores = dict(state["autoencoder_scores"])
        for name, weights in state["models"].items():
            getattr(self.pipeline, name).load_state_dict(weights)
        self.vae_optimizer.load_state_dict(state["optimizers"]["vae"])
        self.optimizer.load_state_dict(state["optimizers"]["denoiser"])
        randomness = state["random"]
        torch.set_rng_state(randomness["torch"])
        self.vae_generator.set_state(randomness["vae_generator"])
        self.generator.set_state(randomness["generator"])
        self.vae_rng.bit_generator.state = randomness["vae_rng"]
        self.rng.setstate(_as_tuples(randomness["rng"]))
        if self.stage == "denoiser":  # the cached latents follow from the autoencoder's weights
            self.encode_latents()
            if float(self.pipeline.vae.config.scaling_factor) != state["scaling_factor"]:
                raise TunelabError("the checkpoint's autoencoder encodes differently here (another machine or thread count?)")


def _as_tuples(value):
    """random.Random states come back from a checkpoint with lists where tuples were."""
    return tuple(_as_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(run: Pretraining, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / (CHECKPOINT_NAME + ".partial")
    torch.save(run.state(), partial)
    os.replace(partial, folder / CHECKPOINT_NAME)  # a stop mid-write never leaves a broken checkpoint


def load_checkpoint(folder: Path) -> dict:
    return torch.load(folder / CHECKPOINT_NAME, weights_only=True)


Progress = Callable[[str, int, object], None]


def pretrain(out: Path, recipe: Recipe, progress: Progress | None = None, evaluate: Callable | None = None,
             checkpoints: Path | None = None, checkpoint_every: int = 500, resume: bool = False,
             evaluate_autoencoder: Callable | None = None, start: Path | None = None) -> dict:
    """Run the recipe, save the pipeline (fp16 weights) to `out`, return the model card's facts.

    `evaluate(pipeline) -> dict` scores the model every recipe.eval_every denoiser steps (the caller
    brings the scoring, which lives in a layer above); `evaluate_autoencoder(vae, world) -> dict` scores the
    autoencoder once its stage ends. With `checkpoints`, the run's state is saved
    there every `checkpoint_every` steps and at each stage's end; `resume` continues from it. `start`: the folder
    of the base a continuing recipe (recipe.continues) starts from, as `tunelab toyworld pretrain` wrote it.
    """
    report = progress or (lambda stage, step, value: None)
    check_autoencoder_steps(recipe)
    started_from = _started_from(recipe, start)
    run = Pretraining(recipe, load_pipeline(start) if started_from else None)
    if checkpoints is not None and (checkpoints / CHECKPOINT_NAME).is_file():
        if not resume:
            raise TunelabError(f"{checkpoints} holds a checkpoint of an earlier run; pass --resume to continue it, "
                               "or choose another checkpoint folder")
        run.load_state(load_checkpoint(checkpoints))
        report("resume", run.step, run.stage)

    def checkpoint(force: bool = False) -> None:
        if checkpoints is not None and (force or run.step % checkpoint_every == 0):
            save_checkpoint(run, checkpoints)

    stages = (("autoencoder", recipe.vae_steps, run.autoencoder_step), ("denoiser", recipe.steps, run.denoiser_step))
    for stage, steps, step_once in stages:
        if run.stage != stage:
            continue
        while run.step < steps:
            started = time.time()
            loss = step_once()
            run.step += 1
            if stage == "denoiser" and evaluate and recipe.eval_every and run.step % recipe.eval_every == 0:
                scores = evaluate(run.pipeline)
                run.history.append({"step": run.step, "seconds": round(sum(run.seconds.values()) + time.time() - started, 1), **scores})
                report("eval", run.step, scores)
            run.seconds[stage] += time.time() - started  # wall time of the steps and evaluations, not of checkpoints
            checkpoint(force=run.step == steps)
            report(stage, run.step, loss)
        if stage == "autoencoder":
            started = time.time()
            if evaluate_autoencoder:
                run.autoencoder_scores = evaluate_autoencoder(run.pipeline.vae, run.world)
                report("autoencoder scores", run.step, run.autoencoder_scores)
            run.stage, run.step = "denoiser", 0
            run.encode_latents()
            run.seconds["denoiser"] += time.time() - started
            checkpoint(force=True)
    out.mkdir(parents=True, exist_ok=True)
    run.pipeline.to(torch.float16).save_pretrained(out, safe_serialization=True)
    facts = {
        "recipe": asdict(recipe),
        "world": asdict(run.world),
        "held_out": [list(combination) for combination in HELD_OUT],
        "autoencoder_seconds": round(run.seconds["autoencoder"], 1),
        "total_seconds": round(sum(run.seconds.values()), 1),
        "torch_threads": torch.get_num_threads(),
        "machine": describe(torch.get_num_threads()),  # where the run ended (a resumed run may have started elsewhere)
        "autoencoder_scores": run.autoencoder_scores,
        "history": run.history,
    }
    if started_from:
        facts["started_from"] = started_from
    (out / "pretraining.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def check_autoencoder_steps(recipe: Recipe) -> None:
    """A recipe from scratch trains its autoencoder; a continuing one keeps its base's (its latents stay the base's),
    or trains the decoder alone (which leaves the latents as they were)."""
    if recipe.continues and recipe.vae_steps and not recipe.decoder_only:
        raise TunelabError(f"generation {recipe.generation}'s recipe keeps its base's autoencoder: --vae-steps must be 0")
    if (recipe.decoder_only or not recipe.continues) and recipe.vae_steps < 1:
        what = "trains its base's decoder" if recipe.decoder_only else "trains from scratch"
        raise TunelabError(f"--vae-steps must be at least 1 for a recipe that {what}")


def _started_from(recipe: Recipe, start: Path | None) -> dict | None:
    """What the base a continuing recipe starts from records: its generation, pretraining time (with the bases it
    continued, if any) and machine."""
    if not recipe.continues:
        if start is not None:
            raise TunelabError(f"generation {recipe.generation}'s recipe trains from scratch; --from is for a recipe that continues a base")
        return None
    record = Path(start) / "pretraining.json" if start is not None else None
    if record is None or not record.is_file():
        raise TunelabError(f"generation {recipe.generation}'s recipe continues a generation-{recipe.continues} base: pass --from "
                           f"DIR, a folder written by `tunelab toyworld pretrain --generation {recipe.continues}`")
    facts = json.loads(record.read_text())
    generation = facts.get("recipe", {}).get("generation", 1)
    if generation != recipe.continues:
        raise TunelabError(f"{start} is a generation-{generation} base; generation {recipe.generation}'s recipe continues generation {recipe.continues}")
    # The whole chain's time: a generation-5 run's start is a generation-4 base that itself continued generation 3.
    chain_seconds = facts["total_seconds"] + facts.get("started_from", {}).get("total_seconds", 0.0)
    return {"generation": generation, "total_seconds": round(chain_seconds, 1), "machine": facts["machine"]}


def recipe_for(generation: int, **changes) -> Recipe:
    """A generation's default recipe with some settings changed."""
    if generation not in RECIPES:
        raise TunelabError(f"no toyworld generation {generation}; generations: {', '.join(map(str, RECIPES))}")
    return replace(RECIPES[generation], **changes)
