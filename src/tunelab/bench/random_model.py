"""Real-size models with random weights, built from the configs shipped under models/configs/.

Speed and memory do not depend on the weight values, so the bench needs no checkpoint: every
component is built from its config directly on the target device and in the target dtype (a
12B transformer built in fp32 on the host first would take minutes).
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import diffusers
import torch
import transformers

from tunelab.errors import TunelabError
from tunelab.models import tokenizer
from tunelab.models.single_file import build_clip_bpe_tokenizer

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "models" / "configs"
# --family -> the shipped config folder of its reference architecture.
FAMILY_CONFIGS = {"sd": "sd15", "sdxl": "sdxl", "flux": "flux", "sd3": "sd35_medium"}


def config_folder(family: str) -> Path:
    folder = CONFIGS_DIR / FAMILY_CONFIGS[family]
    if not (folder / "model_index.json").is_file():
        raise TunelabError(f"--family {family}: no shipped configuration ({folder.name}/) in this version of tunelab")
    return folder


def _tokenizer(folder: Path, class_name: str):
    """The folder's own tokenizer files, else one built from what tunelab ships (the ids only need to be valid)."""
    settings_file = folder / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    max_length = settings.get("model_max_length", 77)
    has_files = any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json", "spiece.model"))
    if has_files:
        return getattr(transformers, class_name).from_pretrained(str(folder), local_files_only=True)
    if class_name.startswith("CLIPTokenizer"):
        return build_clip_bpe_tokenizer(settings.get("pad_token", "<|endoftext|>"), max_length)
    if class_name.startswith("T5Tokenizer"):
        if hasattr(tokenizer, "build_t5_tokenizer"):
            return tokenizer.build_t5_tokenizer(model_max_length=max_length)
    raise TunelabError(f"no tokenizer files in {folder} and no built-in {class_name}")


def _model(library: str, class_name: str, folder: Path):
    model_class = getattr(importlib.import_module(library), class_name)
    if library == "diffusers":
        return model_class.from_config(model_class.load_config(str(folder)))
    config = model_class.config_class.from_pretrained(str(folder))
    return model_class(config)


def random_pipeline(config_dir: Path, device: str | torch.device, dtype: torch.dtype):
    """The pipeline `config_dir` describes (a diffusers folder without weights), with random weights
    made on `device` in `dtype`."""
    index = json.loads((config_dir / "model_index.json").read_text())
    pipeline_class = getattr(diffusers, index["_class_name"])
    accepted = inspect.signature(pipeline_class.__init__).parameters
    components = {}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        for name, spec in index.items():
            if name.startswith("_") or not isinstance(spec, list) or name not in accepted:
                continue
            library, class_name = spec
            folder = config_dir / name
            if library is None or not folder.is_dir():
                components[name] = None
            elif name.startswith("tokenizer"):
                components[name] = _tokenizer(folder, class_name)
            elif name == "scheduler":
                components[name] = getattr(diffusers, class_name).from_pretrained(str(folder))
            else:
                with torch.device(device):
                    components[name] = _model(library, class_name, folder).eval()
    finally:
        torch.set_default_dtype(previous)
    if "requires_safety_checker" in accepted:
        components["requires_safety_checker"] = False
    return pipeline_class(**components)
