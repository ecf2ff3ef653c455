"""A1111's extra-network tags in a prompt: `<KIND:NAME:ARGS>`, resolved in `--adapters-dir`.

Every `<word:...>` tag is taken out of the prompt text before it is encoded, as A1111 does. The kinds
are the registered techniques' tags and their aliases (`lora`, `lyco`, `hypernet`); each technique says
what the arguments after the name mean (`<lora:NAME:TE:UNET>`, `<lora:NAME:unet=0.3:te=0.5>`). A tag of
another kind is dropped with a warning naming it. Names are file stems in DIR (`.safetensors` preferred
over `.pt`).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.methods import generation_methods

logger = logging.getLogger(__name__)

ADAPTER_SUFFIXES = (".safetensors", ".pt")  # in order of preference
_TAG = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class PromptTag:
    kind: str  # a technique's tag kind, e.g. "lora" (an alias such as "lyco" is read as its kind)
    name: str
    weight: Any  # what the technique made of the arguments: a multiplier, or LoRA's {"te", "unet"}


def tag_methods() -> dict[str, type]:
    """Tag kind (and alias) -> the registered technique that reads it."""
    kinds = {}
    for method in generation_methods():
        flag = method.generate_flag
        if flag.tag:
            kinds |= {kind: method for kind in (flag.tag, *flag.tag_aliases)}
    return kinds


def tag_kinds() -> set[str]:
    """The tag kinds of the registered techniques (lora, lyco, hypernet)."""
    return set(tag_methods())


def tag_arguments(text: str) -> tuple[list[str], dict[str, str]]:
    """'toy:0.5:unet=0.3' -> (['toy', '0.5'], {'unet': '0.3'}): A1111's positional and named arguments."""
    positional, named = [], {}
    for item in text.split(":"):
        key, equals, value = item.partition("=")
        if equals and "=" not in value:
            named[key] = value
        else:
            positional.append(item)
    return positional, named


def extract_tags(prompt: str) -> tuple[str, list[PromptTag]]:
    """'a <lora:toy:0.7> car' -> ('a  car', [PromptTag('lora', 'toy', 0.7)]); unknown kinds are dropped, with a warning."""
    tags: list[PromptTag] = []
    methods = tag_methods()
    unknown = []

    def take(match: re.Match) -> str:
        kind = match.group(1)
        if kind not in methods:
            unknown.append(match.group(0))
            return ""
        method = methods[kind]
        positional, named = tag_arguments(match.group(2))
        if not positional or not positional[0].strip():
            raise TunelabError(f"prompt tag {match.group(0)} names no file")
        try:
            weight = method.tag_weight(positional[1:], named)
        except ValueError:
            raise TunelabError(f"prompt tag {match.group(0)}: a weight is not a number") from None
        numbers = weight.values() if isinstance(weight, dict) else [weight]
        if not all(math.isfinite(number) for number in numbers if isinstance(number, float)):
            raise TunelabError(f"prompt tag {match.group(0)}: a weight is not a finite number")
        tags.append(PromptTag(method.generate_flag.tag, positional[0].strip(), weight))
        return ""

    text = _TAG.sub(take, prompt)
    if unknown:
        logger.warning("prompt tags of unknown kinds removed (known: %s): %s", ", ".join(sorted(methods)), " ".join(unknown))
    return text, tags


def resolve_adapter(folder: Path | None, tag: PromptTag) -> Path:
    if folder is None:
        raise TunelabError(f"prompt tag <{tag.kind}:{tag.name}> needs --adapters-dir to say where {tag.name} is")
    if Path(tag.name).name != tag.name or tag.name in (".", "..") or "\\" in tag.name:
        # A tag names a file in the adapters folder; a path would reach files outside it.
        raise TunelabError(f"prompt tag <{tag.kind}:{tag.name}>: give the name of a file in --adapters-dir, not a path")
    for suffix in ADAPTER_SUFFIXES:
        path = folder / f"{tag.name}{suffix}"
        if path.is_file():
            return path
    raise TunelabError(f"no {tag.kind} named {tag.name!r} in {folder} (looked for {tag.name}.safetensors or {tag.name}.pt)")
