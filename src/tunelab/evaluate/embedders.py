"""Image and text embedders for DreamBench's metrics, read from local folders through transformers.

CLIP (`CLIPModel` with its `CLIPProcessor`) embeds images and text into one space; DINO ViT
(`ViTModel`) and DINOv2 (`Dinov2Model`), with the image processor saved beside them, embed images
as the CLS token of the last layer (after the final layer norm), as DreamBench's DINO metric does.
Folders are read with local_files_only: nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from PIL import Image
from transformers import AutoImageProcessor, CLIPModel, CLIPProcessor, Dinov2Model, ViTModel

from tunelab.errors import TunelabError

BATCH = 16
DINO_MODELS = {"vit": ViTModel, "dinov2": Dinov2Model}  # config model_type -> class
_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError)  # what transformers raises on a broken folder


@dataclass(frozen=True)
class Backbone:
    """What measured a number: the hub name the folder's config records (if any), its architecture and sizes."""

    name: str
    architecture: str
    folder: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "architecture": self.architecture, "folder": self.folder}


def _folder_config(folder: str | Path, what: str) -> tuple[Path, dict]:
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise TunelabError(f"{what} model folder not found: {folder}")
    if not folder.is_dir():
        raise TunelabError(f"{what} model path is not a folder: {folder}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise TunelabError(f"{folder} holds no {what} model (no config.json; write one with save_pretrained)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TunelabError(f"{config_file}: not a readable model config ({error})") from None
    if not isinstance(config, dict):
        raise TunelabError(f"{config_file}: not a readable model config")
    return folder, config


def clip_folder(folder: str | Path) -> tuple[Path, dict]:
    """The folder and its config, refused unless it holds a CLIP model (read without loading the weights)."""
    folder, config = _folder_config(folder, "CLIP")
    if config.get("model_type") != "clip":
        raise TunelabError(f"{folder} is not a CLIP model (its config says model_type {config.get('model_type')!r}, not 'clip')")
    return folder, config


def dino_folder(folder: str | Path) -> tuple[Path, dict]:
    """The folder and its config, refused unless it holds a DINO ViT or DINOv2 model."""
    folder, config = _folder_config(folder, "DINO")
    if config.get("model_type") not in DINO_MODELS:
        raise TunelabError(f"{folder} is not a DINO model (its config says model_type {config.get('model_type')!r}; "
                           "DINO ViT is 'vit', DINOv2 'dinov2')")
    return folder, config


def _hub_name(config: dict, folder: Path) -> str:
    """The name the config records (`openai/clip-vit-large-patch14`), else the folder's name."""
    recorded = str(config.get("_name_or_path") or "")
    return recorded if recorded and not Path(recorded).is_absolute() and not Path(recorded).exists() else folder.name


def _vision_sizes(vision: dict) -> str:
    return (f"{vision.get('num_hidden_layers')} layers x {vision.get('hidden_size')}, patch {vision.get('patch_size')}, "
            f"{vision.get('image_size')} px")


def _loaded(load, folder: Path, what: str):
    transformers.utils.logging.disable_progress_bar()  # a "Loading weights" bar per model is noise beside the table
    try:
        return load()
    except _LOAD_ERRORS as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TunelabError(f"cannot load the {what} model in {folder}: {first_line}") from None


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(vectors.float(), dim=-1)


class ClipEmbedder:
    """CLIP's projected image and text embeddings, unit length: cosine similarity is a dot product."""

    def __init__(self, folder: str | Path):
        folder, config = clip_folder(folder)
        self.device = _device()
        self.model = _loaded(lambda: CLIPModel.from_pretrained(folder, local_files_only=True, weights_only=True), folder, "CLIP")
        self.model.to(self.device).eval()
        self.processor = _loaded(lambda: CLIPProcessor.from_pretrained(folder, local_files_only=True), folder, "CLIP processor of the")
        vision = config.get("vision_config") or {}
        self.backbone = Backbone(_hub_name(config, folder),
                                 f"CLIP ViT ({_vision_sizes(vision)}; projection {config.get('projection_dim')})", str(folder))

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, D) unit vectors."""
        parts = []
        for start in range(0, len(images), BATCH):
            pixels = self.processor(images=images[start : start + BATCH], return_tensors="pt")["pixel_values"]  # (b, 3, S, S)
            parts.append(self.model.get_image_features(pixel_values=pixels.to(self.device)).pooler_output)  # (b, D)
        return _unit(torch.cat(parts)).cpu()

    @torch.no_grad()
    def texts(self, prompts: list[str]) -> torch.Tensor:
        """(N, D) unit vectors; prompts longer than CLIP's context are cut, as CLIP itself must."""
        parts = []
        for start in range(0, len(prompts), BATCH):
            tokens = self.processor(text=prompts[start : start + BATCH], return_tensors="pt", padding=True, truncation=True)
            output = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                  attention_mask=tokens["attention_mask"].to(self.device))
            parts.append(output.pooler_output)  # (b, D)
        return _unit(torch.cat(parts)).cpu()


class DinoEmbedder:
    """DINO ViT or DINOv2: the last layer's CLS token, unit length."""

    def __init__(self, folder: str | Path):
        folder, config = dino_folder(folder)
        model_type = config["model_type"]
        model_class = DINO_MODELS[model_type]
        self.device = _device()
        # No pooler: DINO's checkpoints have none, and the CLS token is the embedding.
        self.model = _loaded(lambda: model_class.from_pretrained(folder, local_files_only=True, weights_only=True,
                                                                 **({"add_pooling_layer": False} if model_type == "vit" else {})),
                             folder, "DINO")
        self.model.to(self.device).eval()
        self.processor = _loaded(lambda: AutoImageProcessor.from_pretrained(folder, local_files_only=True), folder,
                                 "image processor of the DINO")
        self.backbone = Backbone(_hub_name(config, folder), f"{model_class.__name__} ({_vision_sizes(config)})", str(folder))

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, D) unit vectors."""
        parts = []
        for start in range(0, len(images), BATCH):
            pixels = self.processor(images=images[start : start + BATCH], return_tensors="pt")["pixel_values"]  # (b, 3, S, S)
            hidden = self.model(pixel_values=pixels.to(self.device)).last_hidden_state  # (b, 1 + patches, D)
            parts.append(hidden[:, 0])  # (b, D) the CLS token
        return _unit(torch.cat(parts)).cpu()
