"""A1111's extra-network tags in a prompt: `<lora:NAME:W>`, `<hypernet:NAME:W>`, resolved in `--adapters-dir`.

Names are file stems in DIR (`.safetensors` preferred over `.pt`). Tags are removed from the
prompt text before it is encoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.methods import generation_methods

ADAPTER_SUFFIXES = (".safetensors", ".pt")  # in order of preference
_TAG = re.compile(r"<(\w+):([^:>]+)(?::([^>]*))?>")


@dataclass(frozen=True)
class PromptTag:
    kind: str  # a technique's tag kind, e.g. "lora"
    name: str
    weight: float


def tag_kinds() -> set[str]:
    """The tag kinds of the registered techniques (lora, hypernet)."""
    return {method.generate_flag.tag for method in generation_methods() if method.generate_flag.tag}


def extract_tags(prompt: str) -> tuple[str, list[PromptTag]]:
    """'a <lora:toy:0.7> car' -> ('a  car', [PromptTag('lora', 'toy', 0.7)]); other <...> text is left alone."""
    tags: list[PromptTag] = []
    kinds = tag_kinds()

    def take(match: re.Match) -> str:
        kind, name, weight_text = match.group(1), match.group(2).strip(), match.group(3)
        if kind not in kinds:
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
