"""`tunelab toyworld ...`: pretrain the base, write a subject's renders, score a base. It lives above toyworld/, beside the
scoring it calls (evaluate/), so the toyworld folder imports nothing above it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.evaluate.base_scores import measure_autoencoder, measure_base, measure_class_prompts
from tunelab.evaluate.sampling import GUIDANCE, STEPS
from tunelab.models.loading import load_pipeline
from tunelab.toyworld.model_card import write_card
from tunelab.toyworld.pretrain import GENERATION_OWN, RECIPES, Recipe, pretrain, recipe_for
from tunelab.toyworld.subjects import SUBJECTS, subject_named, write_training_images
from tunelab.toyworld.world import WORLD, WORLDS

# which world, which base a recipe continues and what it trains are the generation's own, picked by --generation
RECIPE_OPTIONS = [field for field in dataclasses.fields(Recipe) if field.name not in ("generation", *GENERATION_OWN)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, parser_class=type(parser))
    pretrain_parser = actions.add_parser("pretrain", help="train a toyworld base from scratch with the seeded recipe")
    pretrain_parser.add_argument("--out", required=True, help="output folder (a diffusers pipeline)")
    pretrain_parser.add_argument("--generation", type=int, default=1, choices=sorted(RECIPES),
                                 help="which toyworld: 1 = 32 px, 2 = 64 px with anchored positions, 3 = anchored at 32 px, "
                                      "4 = generation 3 with two-coloured patterned objects (continues a generation-3 base: --from), "
                                      "5 = generation 4 with shorter captions (continues a generation-4 base), "
                                      "6 = generation 5's base with a retrained decoder (continues a generation-5 base); "
                                      "picks the defaults below")
    for field in RECIPE_OPTIONS:
        defaults = ", ".join(f"{getattr(recipe, field.name)} (generation {g})" for g, recipe in RECIPES.items())
        pretrain_parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=None,
                                     help=f"default {defaults}")
    pretrain_parser.add_argument("--from", dest="start", type=Path,
                                 help="the base a continuing recipe starts from (generation 4: a generation-3 folder from this command; "
                                      "generation 5: a generation-4 one; generation 6: a generation-5 one)")
    pretrain_parser.add_argument("--score-images", type=int, default=96, help="images for the model card's held-out scores")
    pretrain_parser.add_argument("--checkpoint-dir", type=Path, help="save the run's state here, to resume it after a stop")
    pretrain_parser.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default 500)")
    pretrain_parser.add_argument("--resume", action="store_true", help="continue the run saved in --checkpoint-dir")
    pretrain_parser.add_argument("--log-every", type=int, default=100, help="steps between progress lines (default 100)")
    subject = actions.add_parser("subject", help="write a subject's training renders (PNG + caption files)")
    subject.add_argument("name", help=", ".join(SUBJECTS))
    subject.add_argument("--out", required=True, help="output folder")
    subject.add_argument("--generation", type=int, choices=sorted(WORLDS), help="the world to draw in (default: the shipped base's)")
    score = actions.add_parser("score", help="shape/colour/background/size/position accuracy on held-out captions")
    score.add_argument("--model", default="toyworld", help="toyworld preset or a pretrained folder")
    score.add_argument("--images", type=int, default=96, help="images to generate")
    score.add_argument("--write-card", action="store_true",
                       help="write the scores into the model folder's card (README.md and pretraining.json)")


def _scores(pipeline, images: int, world=None) -> dict:
    pipeline.set_progress_bar_config(disable=True)
    return measure_base(pipeline, count=images, seed=0, world=world)


def _world_of_folder(model: str):
    """The generation a pretrained folder records (generations 1 and 3 share an image size); None if unknown."""
    record = Path(model) / "pretraining.json"
    if not record.is_file():
        return None
    return WORLDS.get(json.loads(record.read_text()).get("recipe", {}).get("generation", 1))


def _score_and_write_card(folder: Path, images: int) -> dict:
    """Score saved weights (held-out captions and bare class prompts) and write the card beside them."""
    if not (folder / "pretraining.json").is_file():
        raise TunelabError(f"{folder} has no pretraining.json: --write-card needs a folder written by `tunelab toyworld pretrain`")
    pipeline = load_pipeline(folder)  # the saved fp16 weights, as they ship
    scores = _scores(pipeline, images, _world_of_folder(str(folder)))
    drawing = measure_class_prompts(pipeline, count=max(images // 4, 4))
    write_card(folder, pipeline, scores, images, f"{STEPS} DPM-Solver++ steps, guidance {GUIDANCE}", drawing)
    return scores | drawing


def _pretrain(args: argparse.Namespace) -> None:
    changes = {field.name: getattr(args, field.name) for field in RECIPE_OPTIONS if getattr(args, field.name) is not None}
    recipe = recipe_for(args.generation, **changes)
    if (recipe.steps < 1 and not recipe.decoder_only) or args.score_images < 1 or args.checkpoint_every < 1 or args.log_every < 1:
        raise TunelabError("--steps, --score-images, --checkpoint-every and --log-every must be at least 1 "
                           "(--steps may be 0 for a recipe that trains the decoder alone)")
    if recipe.decoder_noise < 0:
        raise TunelabError("--decoder-noise is a standard deviation: 0 or more")
    if args.resume and args.checkpoint_dir is None:
        raise TunelabError("--resume needs --checkpoint-dir, the folder the stopped run saved its state in")
    started = time.time()

    def progress(stage, step, value):
        if stage == "eval":
            print(f"step {step}: {json.dumps(value)}", flush=True)
        elif stage == "autoencoder scores":
            print(f"autoencoder reconstructions: {json.dumps(value)}", flush=True)
        elif stage == "resume":
            print(f"resumed the {value} stage at step {step}", flush=True)
        elif step % args.log_every == 0:
            total = recipe.vae_steps if stage == "autoencoder" else recipe.steps
            print(f"{stage} {step}/{total} loss {value:.4f} ({time.time() - started:.0f} s)", flush=True)

    out = Path(args.out)
    facts = pretrain(out, recipe, progress, evaluate=lambda pipeline: _scores(pipeline, recipe.eval_images, WORLDS[recipe.generation]),
                     checkpoints=args.checkpoint_dir, checkpoint_every=args.checkpoint_every, resume=args.resume,
                     evaluate_autoencoder=lambda vae, world: measure_autoencoder(vae, world, count=recipe.eval_images),
                     start=args.start)
    scores = _score_and_write_card(out, args.score_images)
    print(f"saved {out} in {facts['total_seconds']:.0f} s; held-out accuracy {json.dumps(scores)}")


def run(args: argparse.Namespace) -> None:
    if args.action == "pretrain":
        _pretrain(args)
    elif args.action == "subject":
        subject = subject_named(args.name)
        write_training_images(subject, Path(args.out), world=WORLDS[args.generation] if args.generation else WORLD)
        print(f"wrote {args.out}: train with --prompt '{subject.prompt}' (class prompt '{subject.class_prompt}')")
    elif args.write_card:
        print(json.dumps(_score_and_write_card(Path(args.model), args.images)))
    else:
        pipeline = load_pipeline(args.model)
        print(json.dumps(_scores(pipeline, args.images, _world_of_folder(args.model)) | measure_class_prompts(pipeline, count=max(args.images // 4, 4))))
