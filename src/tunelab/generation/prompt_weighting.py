"""A1111's prompt-attention syntax -> (text, weight) runs; pure Python.

`(text:1.3)` sets a weight, `(text)` multiplies by 1.1, `[text]` divides by 1.1; brackets nest
and their factors multiply; `\\(` `\\)` `\\[` `\\]` `\\\\` are literal characters. `BREAK` (upper
case, a word on its own) ends the current 75-token window; it comes out as the run
(BREAK, -1.0), as in A1111. Unbalanced brackets are lenient, exactly as in A1111: a `(` or `[`
never closed weights everything after it, a stray `)` or `]` is literal text (with a warning).
Weights are finite and at most 100 either way: a weight past that is refused, naming the text.
"""

from __future__ import annotations

import logging
import re

from tunelab.errors import TunelabError

logger = logging.getLogger(__name__)

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK = "BREAK"
BREAK_WEIGHT = -1.0
MAX_WEIGHT = 100.0  # |weight| of any text; A1111 prompts use up to about 2

# The tokens of A1111's own grammar (modules/prompt_parser.py), in its order of preference.
_ATTENTION = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\|   # escapes, and a lone backslash
    \(|\[|
    :\s*([+-]?[.\d]+)\s*\)|       # ':1.3)' closes a '(' with an explicit weight
    \)|]|
    [^\\()\[\]:]+|
    :
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def _number(text: str, piece: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TunelabError(f"prompt weight {piece.strip()!r}: {text!r} is not a number") from None
    if not abs(value) <= MAX_WEIGHT:
        raise TunelabError(f"prompt weight {_short(piece)}: weights go from -{MAX_WEIGHT:g} to {MAX_WEIGHT:g}")
    return value


def _short(piece: str) -> str:
    piece = piece.strip()
    return repr(piece if len(piece) <= 24 else piece[:10] + "..." + piece[-10:])


def _check_bounded(runs: list[list]) -> None:
    """Nested brackets multiply: 49 levels of '(' pass 100. Past the bound the embeddings overflow in fp16 (and
    soon in fp32) into an all-black image, so the prompt is refused, naming the text."""
    for text, weight in runs:
        if weight != BREAK_WEIGHT and not abs(weight) <= MAX_WEIGHT:
            raise TunelabError(f"prompt text {_short(text)} gets weight {weight:.3g} from nested brackets; weights go "
                               f"from -{MAX_WEIGHT:g} to {MAX_WEIGHT:g}")


def parse_prompt_weights(text: str) -> list[tuple[str, float]]:
    """'a (red:1.5) car' -> [('a ', 1.0), ('red', 1.5), (' car', 1.0)]; adjacent equal weights merge."""
    runs: list[list] = []  # [text, weight], mutable so closing brackets can scale what they enclose
    open_round: list[int] = []  # index in `runs` where each open '(' began
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in _ATTENTION.finditer(text):
        piece, explicit_weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            runs.append([piece[1:], 1.0])  # a lone backslash is dropped, as in A1111
        elif piece == "(":
            open_round.append(len(runs))
        elif piece == "[":
            open_square.append(len(runs))
        elif explicit_weight is not None and open_round:
            scale_from(open_round.pop(), _number(explicit_weight, piece))
        elif piece == ")" and open_round:
            scale_from(open_round.pop(), ROUND_MULTIPLIER)
        elif piece == "]" and open_square:
            scale_from(open_square.pop(), SQUARE_MULTIPLIER)
        else:
            if piece in (")", "]") or explicit_weight is not None:
                logger.warning("prompt has an unmatched %r; kept as text", piece.strip()[-1])
            for index, part in enumerate(_BREAK.split(piece)):
                if index:
                    runs.append([BREAK, BREAK_WEIGHT])
                runs.append([part, 1.0])

    if open_round or open_square:
        logger.warning("prompt has %d unclosed bracket(s); they weight the rest of the prompt", len(open_round) + len(open_square))
    for start in open_round:
        scale_from(start, ROUND_MULTIPLIER)
    for start in open_square:
        scale_from(start, SQUARE_MULTIPLIER)

    _check_bounded(runs)
    # Neighbours of equal weight merge, -1 included ('(dog:-1)(s:-1)' is the one word 'dogs'), as in A1111, whose
    # BREAK run always has an empty run beside it, so it never merges. Empty runs (no tokens) are dropped after.
    merged: list[list] = []
    for run in runs:
        if merged and merged[-1][1] == run[1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(text_part, weight) for text_part, weight in merged if text_part] or [("", 1.0)]

