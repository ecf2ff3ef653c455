"""`tunelab evaluate`: DreamBench's CLIP-I, CLIP-T and DINO of generated images against real ones, as a table."""

from __future__ import annotations

import argparse

from tunelab import api

LABELS = {"clip_i": "CLIP-I (subject)", "clip_t": "CLIP-T (prompt)", "dino": "DINO (subject)"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="folder of generated images")
    parser.add_argument("--reference", required=True, help="folder of real images of the subject")
    parser.add_argument("--prompt", default=None,
                        help="the prompt of every generated image (default: a same-name .txt beside each image)")
    parser.add_argument("--clip", default=None, help="folder of a CLIP model and its processor (CLIP-I, CLIP-T)")
    parser.add_argument("--dino", default=None, help="folder of a DINO ViT or DINOv2 model and its image processor (DINO)")
    parser.add_argument("--out", default=None, help="write the scores and their details to this JSON file")


def table(record: dict) -> str:
    """One row per metric; 'real images' is the reference images against each other (DreamBench's ceiling)."""
    rows = [("metric", "score", "real images", "pairs", "backbone")]
    for metric, label in LABELS.items():
        detail = record["details"].get(metric)
        if record[metric] is None or detail is None:
            rows.append((label, "not measured", "", "", ""))
            continue
        ceiling = detail.get("real_images")
        backbone = detail["backbone"]
        rows.append((label, f"{record[metric]:.4f}", "" if ceiling is None else f"{ceiling:.4f}",
                     str(detail.get("pairs", detail["generated"])), f"{backbone['name']}: {backbone['architecture']}"))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join(("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]).rstrip() for row in rows)


def run(args: argparse.Namespace) -> None:
    record = api.evaluate(images=args.images, reference=args.reference, prompt=args.prompt, clip=args.clip, dino=args.dino,
                          out=args.out)
    print(table(record))
    if args.out:
        print(f"wrote {args.out}")
