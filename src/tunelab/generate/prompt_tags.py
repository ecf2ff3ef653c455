"""A1111's extra-network tags in a prompt: `<lora:NAME:W>`, `<hypernet:NAME:W>`, resolved in `--adapters-dir`.

Names are file stems in DIR (`.safetensors` preferred over `.pt`); every embedding file in
DIR/embeddings/ becomes a token named after its file stem, as in A1111. Tags are removed from the
prompt text before it is encoded.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError

logger = logging.getLogger(__name__)

ADAPTER_SUFFIXES = (".safetensors", ".pt")  # in order of preference
TAG_KINDS = ("lora", "hypernet")
_TAG = re.compile(r"<(\w+):([^:>]+)(?::([^>]*))?>")


@dataclass(frozen=True)
class PromptTag:
    kind: str  # "lora" or "hypernet"
    name: str
    weight: float


def extract_tags(prompt: str) -> tuple[str, list[PromptTag]]:
    """'a <lora:toy:0.7> car' -> ('a  car', [PromptTag('lora', 'toy', 0.7)]); other <...> text is left alone."""
    tags: list[PromptTag] = []

    def take(match: re.Match) -> str:
        kind, name, weight_text = match.group(1), match.group(2).strip(), match.group(3)
        if kind not in TAG_KINDS:
            return match.group(0)
        try:
            weight = 1.0 if weight_text is None else float(weight_text)
        except ValueError:
            raise TunelabError(f"prompt tag {match.group(0)}: weight {weight_text!r} is not a number") from None
        tags.append(PromptTag(kind, name, weight))
        return ""

    return _TAG.sub(take, prompt), tags


def resolve_adapter(folder: Path | None, tag: PromptTag) -> Path:
    if folder is None:
        raise TunelabError(f"prompt tag <{tag.kind}:{tag.name}> needs --adapters-dir to say where {tag.name} is")
    for suffix in ADAPTER_SUFFIXES:
        path = folder / f"{tag.name}{suffix}"
        if path.is_file():
            return path
    raise TunelabError(f"no {tag.kind} named {tag.name!r} in {folder} (looked for {tag.name}.safetensors or {tag.name}.pt)")


def folder_embeddings(folder: Path | None) -> list[tuple[Path, str]]:
    """(file, token = file stem) for each embedding in DIR/embeddings/, sorted by name."""
    from tunelab.methods.textual_inversion import EMBEDDING_SUFFIXES

    if folder is None or not (folder / "embeddings").is_dir():
        return []
    files = sorted(p for p in (folder / "embeddings").iterdir() if p.is_file() and p.suffix.lower() in EMBEDDING_SUFFIXES)
    return [(path, path.stem) for path in files]


def attach_folder_embeddings(pipeline, specs: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Load each one; one made for another base model is skipped with a warning (A1111 lists them as skipped)."""
    from tunelab.methods.textual_inversion import attach_embeddings

    loaded = []
    for path, token in specs:
        try:
            attach_embeddings(pipeline, [(path, token)])
        except TunelabError as error:
            logger.warning("embedding %s skipped: %s", path.name, error)
            continue
        loaded.append((path, token))
    return loaded
