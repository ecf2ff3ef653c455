"""What every single-file loader shares: the shipped config folders, CLIP's tokenizer built offline, the
scheduler from a config folder, and diffusers' component loaders' failures as one clear line."""

from __future__ import annotations

import gzip
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import diffusers
import torch
from transformers import CLIPTokenizer

from tunelab.errors import TunelabError
from tunelab.models.tokenizer import END_OF_WORD, _bytes_to_unicode

CONFIGS_DIR = Path(__file__).with_name("configs")
CLIP_BPE_FILE = CONFIGS_DIR / "clip_bpe_simple_vocab_16e6.txt.gz"
# CLIP's 49408-token vocabulary: 2 x 256 byte symbols, these merges, then 2 special tokens.
CLIP_MERGE_COUNT = 49152 - 256 - 2


def build_clip_bpe_tokenizer(pad_token: str = "<|endoftext|>", model_max_length: int = 77):
    """OpenAI CLIP's 49408-token BPE tokenizer, built from the merge list shipped with tunelab."""
    with gzip.open(CLIP_BPE_FILE, "rt", encoding="utf-8") as bpe_file:
        lines = bpe_file.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGE_COUNT + 1]]  # line 0 is a version header
    byte_symbols = list(_bytes_to_unicode().values())
    tokens = byte_symbols + [symbol + END_OF_WORD for symbol in byte_symbols] + ["".join(merge) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=model_max_length)


def load_tokenizer(config_dir: str | Path, subfolder: str = "tokenizer"):
    """The config folder's own tokenizer files if it has them, else the shipped CLIP BPE with its settings."""
    folder = Path(config_dir) / subfolder
    if (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file():
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    settings_file = folder / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    return build_clip_bpe_tokenizer(
        pad_token=settings.get("pad_token", "<|endoftext|>"),
        model_max_length=settings.get("model_max_length", 77),
    )


def require_all_weights_loaded(model: torch.nn.Module, name: str, source: str, config_dir: Path) -> None:
    # diffusers builds models on the meta device and silently leaves tensors it found no weights for there.
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    missing = [tensor_name for tensor_name, tensor in tensors if tensor.is_meta]
    if missing:
        raise TunelabError(
            f"{source} lacks {len(missing)} {name} weights that {config_dir} expects (e.g. {missing[0]}); "
            "the checkpoint and the config describe different models"
        )


def load_scheduler(config_dir: Path):
    scheduler_dir = config_dir / "scheduler"
    class_name = json.loads((scheduler_dir / "scheduler_config.json").read_text())["_class_name"]
    scheduler_class = getattr(diffusers, class_name, None)
    if scheduler_class is None:
        raise TunelabError(f"unknown scheduler {class_name!r} in {scheduler_dir}")
    return scheduler_class.from_pretrained(str(scheduler_dir))


@contextmanager
def quiet_dtype_cast_warning() -> Iterator[None]:
    # from_single_file ends with model.to(torch_dtype), and diffusers' ModelMixin.to then warns about
    # "modules that should be kept in float32" even when there are none (SD models have none).
    logger = logging.getLogger("diffusers.models.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def as_tunelab_error(what: str) -> Iterator[None]:
    try:
        yield
    except TunelabError:
        raise
    except Exception as error:  # diffusers reports shape and config mismatches with assorted types
        detail = " ".join(str(error).split())[:300] or type(error).__name__
        raise TunelabError(f"{what}: {detail}") from error
