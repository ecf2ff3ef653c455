"""`tunelab toyworld ...`: pretrain the base, write a subject's renders, score a base on held-out captions."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tunelab.toyworld.pretrain import Recipe

    actions = parser.add_subparsers(dest="action", required=True, parser_class=type(parser))
    pretrain = actions.add_parser("pretrain", help="train a toyworld base from scratch with the seeded recipe")
    pretrain.add_argument("--out", required=True, help="output folder (a diffusers pipeline)")
    for field in dataclasses.fields(Recipe):
        pretrain.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default,
                              help=f"default {field.default}")
    pretrain.add_argument("--score-images", type=int, default=96, help="images for the model card's held-out scores")
    subject = actions.add_parser("subject", help="write a subject's training renders (PNG + caption files)")
    subject.add_argument("name", help="bullseye, checker or flag")
    subject.add_argument("--out", required=True, help="output folder")
    score = actions.add_parser("score", help="shape/colour/background/size/position accuracy on held-out captions")
    score.add_argument("--model", default="toyworld", help="toyworld preset or a pretrained folder")
    score.add_argument("--images", type=int, default=96, help="images to generate")


def run(args: argparse.Namespace) -> None:
    import json

    if args.action == "pretrain":
        from tqdm import tqdm

        from tunelab.toyworld.pretrain import Recipe, pretrain

        recipe = Recipe(**{field.name: getattr(args, field.name) for field in dataclasses.fields(Recipe)})
        if recipe.steps < 1 or recipe.vae_steps < 1 or args.score_images < 1:
            from tunelab.errors import TunelabError

            raise TunelabError("--steps, --vae-steps and --score-images must be at least 1")
        bars = {"autoencoder": tqdm(total=recipe.vae_steps, desc="autoencoder"), "denoiser": tqdm(total=recipe.steps, desc="denoiser")}

        def progress(stage, step, value):
            if stage == "eval":
                tqdm.write(f"step {step}: {json.dumps(value)}")
                return
            bars[stage].update(1)
            bars[stage].set_postfix(loss=f"{value:.4f}")

        import torch

        from tunelab.machine import describe
        from tunelab.toyworld.model_card import score_and_write_card

        facts = pretrain(Path(args.out), recipe, progress)
        for bar in bars.values():
            bar.close()
        scores = score_and_write_card(Path(args.out), describe(torch.get_num_threads()), args.score_images)
        print(f"saved {args.out} in {facts['total_seconds']:.0f} s; held-out accuracy {json.dumps(scores)}")
    elif args.action == "subject":
        from tunelab.toyworld.subjects import subject_named, write_training_images

        subject = subject_named(args.name)
        write_training_images(subject, Path(args.out))
        print(f"wrote {args.out}: train with --prompt '{subject.prompt}' (class prompt '{subject.class_prompt}')")
    else:
        from tunelab.evaluate.base_scores import measure_base
        from tunelab.models.loading import load_pipeline

        pipeline = load_pipeline(args.model)
        pipeline.set_progress_bar_config(disable=True)
        print(json.dumps(measure_base(pipeline, count=args.images, seed=0)))
