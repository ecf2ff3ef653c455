"""The toyworld base's model card: how it was made (enough to make it again) and how well it follows prompts."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from tunelab.toyworld.pretrain import GENERATION_OWN
from tunelab.toyworld.world import (ATTRIBUTES, BACKGROUND_COLOURS, OBJECT_COLOURS, POSITIONS, RESERVED_COLOURS, SHAPES,
                                    TWO_COLOUR_PATTERNS, WORLDS)


def _parameters(pipeline) -> str:
    counts = {name: sum(p.numel() for p in getattr(pipeline, name).parameters()) for name in ("unet", "text_encoder", "vae")}
    return ", ".join(f"{name} {count / 1e6:.2f} M" for name, count in counts.items())


def _world_text(world: dict, recipe: dict) -> str:
    keep = world["keep"]
    placement = ("anywhere it fits" if world["placement"] == "uniform" else
                 f"around the point its position word names (the centre moves at most {world['jitter']:.0%} of the image)")
    autoencoder = ("the pretraining scenes" if recipe["generation"] == 1 else
                   "scenes of any shape, pattern (solid, rings, quadrants, bands) and palette colour, subject colours "
                   "included, so it can draw what subjects are made of; never a subject's own look")
    if recipe.get("autoencoder_generation") and recipe["autoencoder_generation"] != recipe["generation"]:
        autoencoder += f" ({recipe['vae_crop']} px crops of generation {recipe['autoencoder_generation']}'s scenes, as that generation's recipe does)"
    sizes = ", ".join(f"{name} (half-extent {low}-{high} px)" for name, (low, high) in world["sizes"].items())
    return f"""One object per scene on a plain background, hard-edged, from a seeded generator (toyworld generation {world['generation']}):
shapes {", ".join(SHAPES)}; object colours {", ".join(OBJECT_COLOURS)}; backgrounds {", ".join(BACKGROUND_COLOURS)}
(never the object's colour); sizes {sizes}; positions {", ".join(POSITIONS)}, the object placed {placement}.
Captions from a small grammar ("a small red circle on the left on a gray background"); each training caption keeps
the size with chance {keep['size']}, the colour {keep['colour']}, the position {keep['position']} and the background {keep['background']};
{recipe['caption_dropout']:.0%} of captions are empty (for classifier-free guidance).{_patterned_text(world)} The autoencoder trains on {autoencoder}."""


def _patterned_text(world: dict) -> str:
    if not world.get("patterned"):
        return f" The denoiser never sees the reserved colours ({', '.join(RESERVED_COLOURS)}), which subjects are made of."
    return (f" {world['patterned']:.0%} of the objects are two-coloured in a pattern ({', '.join(TWO_COLOUR_PATTERNS)}): two object colours, "
            f"or one object colour and one reserved colour ({', '.join(RESERVED_COLOURS)}); two reserved colours, what every subject "
            f"is made of, never appear together. Their captions name both colours (\"a red orange circle\"), not the pattern.")


def _base_text(started_from: dict) -> str:
    """The base a continuing recipe starts from, as its record tells it."""
    return (f"the generation-{started_from['generation']} base, made by its own recipe "
            f"({started_from['total_seconds'] / 60:.1f} minutes from scratch, on {started_from['machine']})")


def _stages_text(facts: dict, recipe: dict, vae, crop: str) -> str:
    """Stage 1 (the autoencoder), or the base a continuing recipe starts from."""
    started_from = facts.get("started_from")
    if started_from:
        return (f"Stage 1: {_base_text(started_from)}; its autoencoder and latent scaling "
                f"factor ({vae.scaling_factor:.4f}) are kept as they are.{_autoencoder_text(facts.get('autoencoder_scores'))}\n"
                f"Stage 2, the same UNet + text encoder trained on, on this generation's cached latents")
    return (f"Stage 1, autoencoder: {recipe['vae_steps']} steps of AdamW (lr {recipe['vae_learning_rate']}), batch {recipe['vae_batch']}{crop},\n"
            f"MSE + 1e-6 KL; the latent scaling factor is set to 1/std of the encoded scenes ({vae.scaling_factor:.4f})."
            f"{_autoencoder_text(facts.get('autoencoder_scores'))}\n"
            f"Stage 2, UNet + text encoder together on the cached latents")


def _recipe_text(facts: dict, recipe: dict, pipeline, crop: str) -> str:
    if recipe.get("decoder_only"):
        started_from = facts["started_from"]
        noise = (f" with Gaussian noise of std {recipe['decoder_noise']} (in the denoiser's units) added, as a denoiser's latents are "
                 f"near, not on, the encoder's" if recipe.get("decoder_noise") else "")
        return (f"Stage 1: {_base_text(started_from)}; its encoder, latent "
                f"scaling factor ({pipeline.vae.config.scaling_factor:.4f}), UNet and text encoder are kept bit for bit.\n"
                f"Stage 2, the decoder alone (the encoder frozen, so the latents the denoiser learned stay valid): "
                f"{recipe['vae_steps']} steps of AdamW (lr {recipe['vae_learning_rate']}, cosine to a tenth), batch {recipe['vae_batch']}{crop}, "
                f"MSE on decoded posterior samples{noise}.{_autoencoder_text(facts.get('autoencoder_scores'))}")
    return (f"{_stages_text(facts, recipe, pipeline.vae.config, crop)}: {recipe['steps']} steps of AdamW (lr {recipe['learning_rate']},\n"
            f"{recipe['warmup_steps']} warm-up steps then cosine to a tenth), batch {recipe['batch']}, {_objective_text(pipeline.scheduler.config, recipe)}\n"
            f"(tunelab's own training objective, `models/sd.py`).")


def _time_text(facts: dict) -> str:
    started_from = facts.get("started_from")
    if started_from:
        total = (facts["total_seconds"] + started_from["total_seconds"]) / 60
        return f"took {facts['total_seconds'] / 60:.1f} minutes; {total:.1f} minutes in all, from scratch"
    return f"took {facts['total_seconds'] / 60:.1f} minutes ({facts['autoencoder_seconds'] / 60:.1f} for the autoencoder)"


def _autoencoder_text(scores: dict | None) -> str:
    if not scores:
        return ""
    fidelities = ", ".join(f"{name.removesuffix('_fidelity')} {value:.2f}" for name, value in scores.items() if name.endswith("_fidelity"))
    return (f"\nThe autoencoder alone (encode, decode, read back), the ceiling for any model built on it: held-out scenes "
            f"read back exactly {scores['readback_accuracy']:.2f}; subject fidelity of reconstructed subject renders {fidelities}.")


def _objective_text(scheduler: dict, recipe: dict) -> str:
    prediction = "epsilon" if scheduler["prediction_type"] == "epsilon" else "v"
    schedule = ("SD's scaled-linear DDPM schedule rescaled to zero terminal SNR (trailing timesteps when sampling)"
                if scheduler.get("rescale_betas_zero_snr") else "SD's scaled-linear DDPM schedule")
    weighting = f"min-SNR-gamma {recipe['min_snr_gamma']}" if recipe["min_snr_gamma"] else "every timestep weighted alike"
    return f"{prediction} prediction on {schedule}, {weighting}"


def _drawing_text(drawing: dict | None) -> str:
    if not drawing:
        return ""
    return (f"\n\nBare class prompts (`a circle`, `a square`, ...): the shape asked {drawing['class_shape_accuracy']:.2f}, "
            f"in a base colour {drawing['class_base_colour']:.2f}; pixels in a clean palette colour {drawing['crisp_pixels']:.2f}; "
            f"background pixels away from the object that read as the background {drawing['flat_background']:.2f}.")


def write_card(folder: Path, pipeline, scores: dict, images: int, sampling: str, drawing: dict | None = None) -> None:
    """Write README.md beside the saved weights: the recipe, the run's record and the held-out `scores`
    (measured by the caller on `pipeline`, the saved weights, from `images` images sampled as `sampling` says),
    with how it draws bare class prompts (`drawing`) when measured."""
    facts = json.loads((folder / "pretraining.json").read_text())
    facts["scores"] = scores
    if drawing:
        facts["drawing"] = drawing
    (folder / "pretraining.json").write_text(json.dumps(facts, indent=2) + "\n")
    recipe = facts["recipe"]
    world = facts.get("world") or asdict(WORLDS[recipe.get("generation", 1)])
    flags = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in recipe.items() if key not in GENERATION_OWN)
    history = "\n".join(
        f"| {row['step']} | {row['seconds']:.0f} | " + " | ".join(f"{row[f'{a}_accuracy']:.2f}" for a in ATTRIBUTES) + " |"
        for row in facts["history"]
    )
    during = f"""
During training ({recipe['eval_images']} images each):

| step | seconds | shape | colour | background | size | position |
|---|---|---|---|---|---|---|
{history}
""" if history else ""
    held_out = ", ".join(f"{colour} {shape} on {background}" for shape, colour, background in facts["held_out"])
    unet, vae = pipeline.unet.config, pipeline.vae.config
    side = world["resolution"]
    crop = f" of {recipe['vae_crop']} px crops around the object" if recipe.get("vae_crop") else ""
    start = f"--from GENERATION_{recipe['continues']}_DIR " if recipe.get("continues") else ""
    card = f"""# toyworld base model

A Stable-Diffusion-shaped text-to-image model (diffusers `StableDiffusionPipeline`: AutoencoderKL,
CLIPTextModel with a tokenizer built by tunelab, UNet2DConditionModel, DPM-Solver++ scheduler) trained
from scratch on toyworld's rendered scenes. It ships with tunelab as the preset `toyworld`: the base
for `tunelab demo`, `tunelab compare` and the tests that check each technique really learns.

- Parameters: {_parameters(pipeline)}; weights stored in fp16 (loaded as fp32).
- Images {side}x{side} px, latents {unet.sample_size}x{unet.sample_size}x{vae.latent_channels}; prompts up to {pipeline.tokenizer.model_max_length} tokens.

## Data
{_world_text(world, recipe)}
{recipe['scenes']} scenes; these (shape, colour, background) combinations are held out of pretraining and used
only for scoring: {held_out}.

## Recipe
{_recipe_text(facts, recipe, pipeline, crop)}

To make it again (the same seed gives the same weights on the same machine and thread count):

    tunelab toyworld pretrain --out DIR {start}{flags}

Made on: {facts['machine']}; {_time_text(facts)}.

## How well it follows prompts
Measured on {images} images of the held-out combinations, full captions, {sampling};
each image read back by tunelab's exact scene reader (`evaluate/scene_reading.py`):

| shape | colour | background | size | position |
|---|---|---|---|---|
| {" | ".join(f"{scores[f'{a}_accuracy']:.2f}" for a in ATTRIBUTES)} |{_drawing_text(drawing)}

Reproduce: `tunelab toyworld score --model toyworld --images {images}`.
{during}"""
    (folder / "README.md").write_text(card)
