"""Textual-inversion embedding files; the only code that knows their key names.

Layouts read (each as `.pt`/`.bin` through weights_only loading, or `.safetensors`):
- A1111 `.pt`: {"string_to_param": {"*": (n, dim)}, "name", "step", ...}
- A1111/kohya `.safetensors` (and kohya `.pt`): {"emb_params": (n, dim)}
- SDXL (A1111, kohya): {"clip_l": (n, 768), "clip_g": (n, 1280)}
- diffusers `learned_embeds`: {token: (dim,) or (n, dim)}

In memory an embedding is its vectors per text-encoder component of the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.errors import TunelabError
from tunelab.formats.safetensors_io import save_tensors, save_torch_tree
from tunelab.safe_load import load_state_dict, load_torch_tree, read_safetensors_metadata

EMB_PARAMS = "emb_params"
A1111_PARAMS = "string_to_param"
# SDXL files name their two encoders by CLIP model; the pipeline by component.
SDXL_KEYS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}
SINGLE_ENCODER = "text_encoder"
A1111_PLACEHOLDER_ID = 265  # A1111 records CLIP's id of "*" in string_to_token; readers ignore it


@dataclass
class Embedding:
    vectors: dict[str, torch.Tensor]  # text-encoder component -> (n_vectors, dim)
    name: str | None = None  # the trigger the file suggests (A1111 name, diffusers token), if any
    step: int | None = None

    @property
    def n_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]


def read_embedding(path: str | Path) -> Embedding:
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        metadata = read_safetensors_metadata(path)
        embedding = _from_tree(load_state_dict(path), path)
        embedding.name = metadata.get("name", embedding.name)
        if metadata.get("step", "").isdigit():
            embedding.step = int(metadata["step"])
        return embedding
    return _from_tree(load_torch_tree(path), path)


def _from_tree(tree: object, path: Path) -> Embedding:
    if isinstance(tree, torch.Tensor):
        return Embedding({SINGLE_ENCODER: _as_vectors(tree, path)})
    if not isinstance(tree, dict):
        raise TunelabError(f"{path.name}: not an embedding file (it holds a {type(tree).__name__})")
    step = tree.get("step") if isinstance(tree.get("step"), int) else None
    name = tree.get("name") if isinstance(tree.get("name"), str) else None
    if A1111_PARAMS in tree:
        params = tree[A1111_PARAMS]
        if not isinstance(params, dict) or len(params) != 1:
            raise TunelabError(f"{path.name}: A1111 embedding must hold exactly one entry in string_to_param")
        return Embedding({SINGLE_ENCODER: _as_vectors(next(iter(params.values())), path)}, name, step)
    if set(SDXL_KEYS) <= set(tree):
        vectors = {component: _as_vectors(tree[key], path) for key, component in SDXL_KEYS.items()}
        if len({v.shape[0] for v in vectors.values()}) != 1:
            raise TunelabError(f"{path.name}: clip_l and clip_g hold different numbers of vectors")
        return Embedding(vectors, name, step)
    if EMB_PARAMS in tree:
        return Embedding({SINGLE_ENCODER: _as_vectors(tree[EMB_PARAMS], path)}, name, step)
    tensors = {key: value for key, value in tree.items() if isinstance(value, torch.Tensor)}
    if len(tensors) == 1:  # diffusers: the token is the key
        token, vectors = next(iter(tensors.items()))
        return Embedding({SINGLE_ENCODER: _as_vectors(vectors, path)}, str(token), step)
    keys = ", ".join(map(str, list(tree)[:6]))
    raise TunelabError(
        f"{path.name}: not a textual-inversion embedding (expected string_to_param, emb_params, clip_l/clip_g "
        f"or a single token: tensor entry; found {keys})"
    )


def _as_vectors(value: object, path: Path) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() not in (1, 2):
        raise TunelabError(f"{path.name}: embedding vectors must be a float tensor of shape (n, dim) or (dim,)")
    vectors = value.detach().float()
    if not torch.isfinite(vectors).all():
        raise TunelabError(f"{path.name}: embedding vectors hold NaN or infinite values; the file is broken")
    return vectors.unsqueeze(0) if vectors.dim() == 1 else vectors  # (n_vectors, dim)


def write_embedding_safetensors(embedding: Embedding, path: Path, metadata: dict[str, str]) -> Path:
    """kohya/A1111 layout: `emb_params`, or `clip_l`/`clip_g` for SDXL; name and step in the metadata."""
    header = dict(metadata)
    if embedding.name is not None:
        header["name"] = embedding.name
    if embedding.step is not None:
        header["step"] = str(embedding.step)
    return save_tensors(_keyed_vectors(embedding), path, header)


def write_embedding_pt(embedding: Embedding, path: Path) -> Path:
    """A1111 layout; SDXL files hold only clip_l/clip_g (A1111 reads every entry of those as a tensor)."""
    if set(embedding.vectors) != {SINGLE_ENCODER}:
        return save_torch_tree(_keyed_vectors(embedding), path)
    tree = {
        "string_to_token": {"*": A1111_PLACEHOLDER_ID},
        A1111_PARAMS: {"*": embedding.vectors[SINGLE_ENCODER]},
        "name": embedding.name,
        "step": embedding.step,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
    }
    return save_torch_tree(tree, path)


def _keyed_vectors(embedding: Embedding) -> dict[str, torch.Tensor]:
    if set(embedding.vectors) == {SINGLE_ENCODER}:
        return {EMB_PARAMS: embedding.vectors[SINGLE_ENCODER]}
    if set(embedding.vectors) == set(SDXL_KEYS.values()):
        return {key: embedding.vectors[component] for key, component in SDXL_KEYS.items()}
    raise TunelabError(f"no embedding file layout for text encoders {', '.join(sorted(embedding.vectors))}")
