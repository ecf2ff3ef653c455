"""DreamBench's metrics (Ruiz et al. 2023) on embeddings: CLIP-I, DINO and CLIP-T.

CLIP-I and DINO: mean cosine similarity over every (generated, reference) pair of image embeddings.
CLIP-T: mean cosine similarity of each generated image's CLIP embedding with its own prompt's.
Each number is recorded with the backbone that measured it.
"""

from __future__ import annotations

import torch
from PIL import Image

from tunelab.errors import TunelabError
from tunelab.evaluate.embedders import ClipEmbedder, DinoEmbedder

EMBEDDING_METRICS = ("clip_i", "clip_t", "dino")


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(vectors.double(), dim=-1)


def mean_pairwise_cosine(generated: torch.Tensor, reference: torch.Tensor) -> float:
    """(N, D) and (M, D) embeddings -> the mean of all N x M cosine similarities."""
    return float((_unit(generated) @ _unit(reference).T).mean())  # (N, M) -> mean


def mean_matched_cosine(images: torch.Tensor, texts: torch.Tensor) -> float:
    """(N, D) and (N, D) embeddings -> the mean cosine similarity of row i with row i."""
    return float((_unit(images) * _unit(texts)).sum(-1).mean())  # (N,) -> mean


def mean_distinct_pair_cosine(embeddings: torch.Tensor) -> float | None:
    """(M, D) embeddings -> the mean cosine similarity over the M x (M - 1) pairs of different rows: DreamBench's
    'real images' ceiling when they are a subject's real images; None for fewer than two."""
    count = embeddings.shape[0]
    if count < 2:
        return None
    similarities = _unit(embeddings) @ _unit(embeddings).T  # (M, M), ones on the diagonal
    return float((similarities.sum() - similarities.diagonal().sum()) / (count * (count - 1)))


def embedding_scores(generated: list[Image.Image], reference: list[Image.Image], prompts: list[str] | None,
                     clip: ClipEmbedder | None, dino: DinoEmbedder | None) -> dict:
    """`clip_i`, `clip_t`, `dino` (None where no embedder was given, or no prompts for CLIP-T) and `details`:
    per metric the backbone, the images and the pairs averaged, and for CLIP-I and DINO `real_images`, the
    reference images against each other (DreamBench's ceiling)."""
    if not generated or not reference:
        raise TunelabError("DreamBench metrics need at least one generated and one reference image")
    if prompts is not None and len(prompts) != len(generated):
        raise TunelabError(f"{len(prompts)} prompts for {len(generated)} generated images: one prompt per image")
    scores: dict = dict.fromkeys(EMBEDDING_METRICS)
    details: dict = {}
    pairs = {"generated": len(generated), "reference": len(reference), "pairs": len(generated) * len(reference)}
    if clip is not None:
        generated_clip = clip.images(generated)  # (N, D)
        reference_clip = clip.images(reference)  # (M, D)
        scores["clip_i"] = mean_pairwise_cosine(generated_clip, reference_clip)
        details["clip_i"] = {"backbone": clip.backbone.as_dict(), **pairs,
                             "real_images": mean_distinct_pair_cosine(reference_clip)}
        if prompts is not None:
            scores["clip_t"] = mean_matched_cosine(generated_clip, clip.texts(prompts))
            details["clip_t"] = {"backbone": clip.backbone.as_dict(), "generated": len(generated), "prompts": len(set(prompts))}
    if dino is not None:
        reference_dino = dino.images(reference)  # (M, D)
        scores["dino"] = mean_pairwise_cosine(dino.images(generated), reference_dino)
        details["dino"] = {"backbone": dino.backbone.as_dict(), **pairs, "real_images": mean_distinct_pair_cosine(reference_dino)}
    return {**scores, "details": details}
