"""The toyworld base's model card: how it was made (enough to make it again) and how well it follows prompts."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.evaluate.sampling import GUIDANCE, STEPS
from tunelab.toyworld.world import BACKGROUND_COLOURS, OBJECT_COLOURS, POSITIONS, RESOLUTION, SHAPES, SIZES

SCORE_IMAGES = 96


def _parameters(pipeline) -> str:
    counts = {name: sum(p.numel() for p in getattr(pipeline, name).parameters()) for name in ("unet", "text_encoder", "vae")}
    return ", ".join(f"{name} {count / 1e6:.2f} M" for name, count in counts.items())


def score_and_write_card(folder: Path, machine: str, images: int = SCORE_IMAGES) -> dict:
    """Measure the saved (fp16) weights on held-out captions and write README.md beside them."""
    from tunelab.evaluate.base_scores import measure_base
    from tunelab.models.loading import load_pipeline

    facts = json.loads((folder / "pretraining.json").read_text())
    pipeline = load_pipeline(folder)
    pipeline.set_progress_bar_config(disable=True)
    scores = measure_base(pipeline, count=images, seed=0)
    facts |= {"scores": scores, "machine": machine}
    (folder / "pretraining.json").write_text(json.dumps(facts, indent=2) + "\n")
    recipe = facts["recipe"]
    flags = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in recipe.items())
    history = "\n".join(
        f"| {row['step']} | {row['seconds']:.0f} | " + " | ".join(f"{row[f'{a}_accuracy']:.2f}" for a in ("shape", "colour", "background", "size", "position")) + " |"
        for row in facts["history"]
    )
    held_out = ", ".join(f"{colour} {shape} on {background}" for shape, colour, background in facts["held_out"])
    card = f"""# toyworld base model

A Stable-Diffusion-shaped text-to-image model (diffusers `StableDiffusionPipeline`: AutoencoderKL,
CLIPTextModel with a tokenizer built by tunelab, UNet2DConditionModel, DPM-Solver++ scheduler) trained
from scratch on toyworld's rendered scenes. It ships with tunelab as the preset `toyworld`: the base
for `tunelab demo`, `tunelab compare` and the tests that check each technique really learns.

- Parameters: {_parameters(pipeline)}; weights stored in fp16 (loaded as fp32).
- Images {RESOLUTION}x{RESOLUTION} px, latents 8x8x4; prompts up to {pipeline.tokenizer.model_max_length} tokens.

## Data
One object per scene on a plain background, hard-edged, from a seeded generator:
shapes {", ".join(SHAPES)}; object colours {", ".join(OBJECT_COLOURS)}; backgrounds {", ".join(BACKGROUND_COLOURS)}
(never the object's colour); sizes {", ".join(SIZES)}; positions {", ".join(POSITIONS)}.
Captions from a small grammar ("a small red circle on the left on a gray background"), size, position and
background each left out at random; 10% of captions are empty (for classifier-free guidance).
{recipe['scenes']} scenes; these (shape, colour, background) combinations are held out of pretraining and used
only for scoring: {held_out}. Subject colours (orange, purple, pink) never appear.

## Recipe
Stage 1, autoencoder: {recipe['vae_steps']} steps of AdamW (lr {recipe['vae_learning_rate']}), batch {recipe['vae_batch']},
MSE + 1e-6 KL; the latent scaling factor is set to 1/std of the encoded scenes ({pipeline.vae.config.scaling_factor:.4f}).
Stage 2, UNet + text encoder together on the cached latents: {recipe['steps']} steps of AdamW (lr {recipe['learning_rate']},
{recipe['warmup_steps']} warm-up steps then cosine to a tenth), batch {recipe['batch']}, epsilon prediction on SD's scaled-linear
DDPM schedule, min-SNR-gamma {recipe['min_snr_gamma']} (tunelab's own training objective, `models/sd.py`).

To make it again (the same seed gives the same weights on the same machine and thread count):

    tunelab toyworld pretrain --out DIR {flags}

Made on: {facts['machine']}; took {facts['total_seconds'] / 60:.1f} minutes ({facts['autoencoder_seconds'] / 60:.1f} for the autoencoder).

## How well it follows prompts
Measured on {images} images of the held-out combinations, full captions, {STEPS} DPM-Solver++ steps, guidance {GUIDANCE};
each image read back by tunelab's exact scene reader (`evaluate/scene_reading.py`):

| shape | colour | background | size | position |
|---|---|---|---|---|
| {scores['shape_accuracy']:.2f} | {scores['colour_accuracy']:.2f} | {scores['background_accuracy']:.2f} | {scores['size_accuracy']:.2f} | {scores['position_accuracy']:.2f} |

Reproduce: `tunelab toyworld score --model toyworld --images {images}`.

During training ({facts['recipe']['eval_images']} images each):

| step | seconds | shape | colour | background | size | position |
|---|---|---|---|---|---|---|
{history}
"""
    (folder / "README.md").write_text(card)
    return scores
