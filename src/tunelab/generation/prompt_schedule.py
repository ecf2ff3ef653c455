"""A1111's prompt scheduling, before weighting: `AND` sub-prompts, prompt editing and alternation; pure Python.

- `a cat AND a dog :0.5` -> sub-prompts ("a cat", 1.0), ("a dog", 0.5) whose noise predictions are combined
  (composable diffusion); a trailing `:NUMBER` weights a prompt even without `AND`.
- `[from:to:when]` uses `from` up to step `when` and `to` after it; `[to:when]` adds, `[from::when]` removes.
  `when` with a `.` is a fraction of the steps (`[a:b:0.25]`), without one a step number.
- `[a|b|c]` cycles through its options, one per step.

Steps count from 1: with `[a:b:3]`, steps 1-3 see `a` and step 4 on sees `b`. Text that does not parse
as this grammar is left as it is (brackets of emphasis pass through to `prompt_weighting`), and a `|`
outside an alternation leaves the whole prompt unscheduled, as in A1111.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_AND = re.compile(r"\bAND\b")
_TRAILING_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)
_NUMBER = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")
_SPECIAL = "[]():|"


def split_and(prompt: str) -> list[tuple[str, float]]:
    """'a cat AND a dog :0.5' -> [('a cat', 1.0), ('a dog', 0.5)]; trailing blanks go with the weight."""
    parts = []
    for part in _AND.split(prompt):
        match = _TRAILING_WEIGHT.match(part)
        parts.append((match.group(1), float(match.group(2)) if match.group(2) is not None else 1.0))
    return parts


# --- the parse tree: a sequence is a list of nodes


@dataclass
class Text:
    value: str


@dataclass
class Group:  # '(' ... ')' or '[' ... ']' of emphasis, kept as text for the weighting parser
    open: str
    parts: list  # sequences, joined by ':' (at most one, in round brackets)
    close: str


@dataclass
class Scheduled:
    before: list | None
    after: list
    when: str  # as written: '3' or '.5'


@dataclass
class Alternate:
    options: list  # sequences


class _Fail(Exception):
    """This bracket does not parse; at the top level its opening character becomes text."""


class _Unschedulable(Exception):
    """The whole prompt is outside the grammar (a '|' outside an alternation, a trailing backslash)."""


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text

    def plain(self, position: int) -> tuple[str, int]:
        start = position
        while position < len(self.text) and self.text[position] not in _SPECIAL:
            if self.text[position] == "\\":
                if position + 1 == len(self.text):
                    raise _Unschedulable
                position += 1
            position += 1
        return self.text[start:position], position

    def sequence(self, position: int, stops: str) -> tuple[list, int]:
        """Nodes up to (not including) one of `stops`; a bracket that does not close fails the caller."""
        nodes = []
        while position < len(self.text):
            char = self.text[position]
            if char in stops:
                return nodes, position
            if char == "(":
                node, position = self.round(position)
            elif char == "[":
                node, position = self.square(position)
            elif char in _SPECIAL:
                raise _Fail
            else:
                value, position = self.plain(position)
                node = Text(value)
            nodes.append(node)
        raise _Fail  # ran out of text inside a bracket

    def round(self, position: int) -> tuple[Group, int]:
        first, position = self.sequence(position + 1, ":)")
        parts = [first]
        if self.text[position] == ":":
            second, position = self.sequence(position + 1, ")")
            parts.append(second)
        return Group("(", parts, ")"), position + 1

    def square(self, position: int):
        parts, separators = [], []
        while True:
            part, position = self.sequence(position + 1, ":|]")
            parts.append(part)
            if self.text[position] == "]":
                break
            separators.append(self.text[position])
        position += 1
        if separators and set(separators) == {"|"}:
            return Alternate(parts), position
        if separators in ([":"], [":", ":"]):
            when = self.number(parts[-1])
            if when is not None:
                before = parts[0] if len(parts) == 3 else None
                return Scheduled(before, parts[-2], when), position
        if not separators:
            return Group("[", parts, "]"), position
        raise _Fail

    @staticmethod
    def number(nodes: list) -> str | None:
        if len(nodes) == 1 and isinstance(nodes[0], Text):
            match = _NUMBER.fullmatch(nodes[0].value)
            return match.group(1) if match else None
        return None

    def top(self) -> list:
        """The whole prompt; at this level a bracket that does not parse is text (A1111's fallback)."""
        nodes, position = [], 0
        while position < len(self.text):
            char = self.text[position]
            try:
                if char == "(":
                    node, position = self.round(position)
                elif char == "[":
                    node, position = self.square(position)
                elif char == "|":
                    raise _Unschedulable
                elif char in _SPECIAL:
                    node, position = Text(char), position + 1
                else:
                    value, position = self.plain(position)
                    node = Text(value)
            except _Fail:
                node, position = Text(char), position + 1
            nodes.append(node)
        return nodes


def parse_schedule(prompt: str) -> list | None:
    """The parse tree, or None where the prompt is outside the grammar (it is then used as written)."""
    try:
        return _Parser(prompt).top()
    except _Unschedulable:
        return None


def _switch_step(when: str, steps: int) -> int:
    value = float(when) * steps if "." in when else float(when)
    return min(steps, int(value))


def _walk(nodes: list):
    for node in nodes:
        yield node
        children = []
        if isinstance(node, Group):
            children = node.parts
        elif isinstance(node, Scheduled):
            children = [node.after] + ([node.before] if node.before is not None else [])
        elif isinstance(node, Alternate):
            children = node.options
        for child in children:
            yield from _walk(child)


def _text_at(nodes: list, step: int, steps: int) -> str:
    pieces = []
    for node in nodes:
        if isinstance(node, Text):
            pieces.append(node.value)
        elif isinstance(node, Group):
            pieces.append(node.open + ":".join(_text_at(part, step, steps) for part in node.parts) + node.close)
        elif isinstance(node, Scheduled):
            chosen = node.before if step <= _switch_step(node.when, steps) else node.after
            pieces.append(_text_at(chosen or [], step, steps))
        else:
            pieces.append(_text_at(node.options[(step - 1) % len(node.options)], step, steps))
    return "".join(pieces)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """[(last step, text), ...]: the text to encode for steps up to and including `last step`.

    'a [b:3]' at 10 steps -> [(3, 'a '), (10, 'a b')]; an alternation changes the text every step."""
    tree = parse_schedule(prompt)
    if tree is None:
        return [(steps, prompt)]
    ends = {steps}
    for node in _walk(tree):
        if isinstance(node, Scheduled) and _switch_step(node.when, steps) >= 1:
            ends.add(_switch_step(node.when, steps))
        elif isinstance(node, Alternate):
            ends.update(range(1, steps + 1))
    return [(end, _text_at(tree, end, steps)) for end in sorted(ends)]


def text_at_step(schedule: list[tuple[int, str]], step: int) -> str:
    """The text of a schedule at sampling step `step` (1-based)."""
    for end, text in schedule:
        if step <= end:
            return text
    return schedule[-1][1]


def is_scheduled(prompt: str) -> bool:
    """Whether the prompt needs more than one text or more than one plain sub-prompt."""
    parts = split_and(prompt)
    return len(parts) > 1 or parts[0][1] != 1.0 or len(prompt_schedule(parts[0][0], 2)) > 1
