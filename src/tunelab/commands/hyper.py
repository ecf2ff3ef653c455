"""`tunelab hyper pretrain`: pretrain a weight predictor on procedural toyworld subjects (hyper/pretrain.py)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from tunelab.config import flag_name
from tunelab.errors import TunelabError
from tunelab.hyper.pretrain import ZERO_ALLOWED, HyperRecipe, pretrain

WORLDS_KNOWN = ("toyworld",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, parser_class=type(parser))
    sub = actions.add_parser("pretrain", help="pretrain a weight predictor (HyperDreamBooth style) on procedural subjects")
    sub.add_argument("--world", default="toyworld", choices=WORLDS_KNOWN, help="where the subjects come from")
    sub.add_argument("--model", default="toyworld", help="the base model (preset or diffusers folder); default toyworld")
    sub.add_argument("--out", required=True, type=Path, help="output folder; a run there resumes from its checkpoints")
    for field in dataclasses.fields(HyperRecipe):
        sub.add_argument(flag_name(field.name), type=type(field.default), default=field.default,
                         help=f"{field.metadata['help']} (default {field.default})")


def run(args: argparse.Namespace) -> None:
    recipe = HyperRecipe(**{field.name: getattr(args, field.name) for field in dataclasses.fields(HyperRecipe)})
    for field in dataclasses.fields(HyperRecipe):
        value = getattr(recipe, field.name)
        if isinstance(value, (int, float)) and (value < 0 or (value == 0 and field.name not in ZERO_ALLOWED)):
            raise TunelabError(f"{flag_name(field.name)} must be {'0 or more' if field.name in ZERO_ALLOWED else 'positive'}, got {value}")
    pretrain(args.model, args.out, recipe, log=lambda line: print(line, flush=True))
