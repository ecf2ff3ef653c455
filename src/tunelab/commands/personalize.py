"""`tunelab personalize`: a subject's LoRA from one or a few images in one forward pass (hyper/personalize.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tunelab.hyper.personalize import personalize
from tunelab.methods.predicted_lora import REFINE_LEARNING_RATE, REFINE_MIN_SNR_GAMMA


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hypernet", required=True, help="a weight predictor from `tunelab hyper pretrain`, or toyworld (the shipped one)")
    parser.add_argument("--images", required=True, nargs="+", help="the subject's image(s): files and/or folders")
    parser.add_argument("--out", required=True, type=Path, help="the LoRA file to write (kohya .safetensors)")
    parser.add_argument("--refine-steps", type=int, default=0, help="ordinary LoRA steps after the prediction (default 0)")
    parser.add_argument("--model", help="base model for refining (default: the predictor's own)")
    parser.add_argument("--prompt", help="the subject's prompt for refining, with the predictor's token: \"a sks circle\"")
    parser.add_argument("--class-prompt", help="refine with prior preservation on this class prompt (\"a circle\")")
    parser.add_argument("--learning-rate", type=float, default=REFINE_LEARNING_RATE,
                        help=f"learning rate of the refinement (default {REFINE_LEARNING_RATE})")
    parser.add_argument("--min-snr-gamma", type=float, default=REFINE_MIN_SNR_GAMMA,
                        help=f"min-SNR-gamma timestep weights of the refinement, as the predictor trained (default "
                             f"{REFINE_MIN_SNR_GAMMA}; 0: uniform)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the refinement")


def run(args: argparse.Namespace) -> None:
    result = personalize(args.hypernet, args.images, args.out, refine_steps=args.refine_steps, model=args.model,
                         prompt=args.prompt, class_prompt=args.class_prompt, seed=args.seed,
                         learning_rate=args.learning_rate, min_snr_gamma=args.min_snr_gamma,
                         log=lambda line: print(line, flush=True))
    print(f"wrote {result.path} in {result.total_seconds:.1f} s (prediction {result.predict_seconds:.3f} s)")
