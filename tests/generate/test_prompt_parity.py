"""Parity with A1111's prompt syntax over a few hundred prompts: schedules (editing, alternation, AND), weighted
pieces, 75-token chunks with the comma back-off, per-token weights.

Expected values come from A1111's documented behaviour: its doctests and wiki for the hand-written cases
(each checked once against A1111's own grammar on the dev machine), and for the seeded random prompts
values known by construction (a prompt built from words whose weights and schedules are chosen first)
or, for chunking, the rule as A1111 states it (`rule_chunks`). Intentional differences: docs/generation.md.
"""

from __future__ import annotations

import random

import pytest

from tunelab.generation.prompt_encoding import prompt_windows
from tunelab.generation.prompt_schedule import prompt_schedule, split_and
from tunelab.generation.prompt_weighting import parse_prompt_weights
from tunelab.models.presets import build_preset

# --- schedules: (prompt, steps, [(last step, text), ...])
SCHEDULES = [
    ("test", 10, [(10, "test")]),
    ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
    ("a [b: 3]", 10, [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", 10, [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", 10, [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", 10, [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", 10, [(10, "a [unbalanced")]),
    ("a [b:.5] c", 10, [(5, "a  c"), (10, "a b c")]),
    ("a [{b|d{:.5] c", 10, [(10, "a [{b|d{:.5] c")]),  # a '|' outside an alternation: nothing scheduled
    ("((a][:b:c [d:3]", 10, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", 4, [(1, "a"), (2, "(b:1.1)"), (3, "a"), (4, "(b:1.1)")]),
    ("[fe|]male", 4, [(1, "female"), (2, "male"), (3, "female"), (4, "male")]),
    ("[fe|||]male", 5, [(1, "female"), (2, "male"), (3, "male"), (4, "male"), (5, "female")]),
    ("[a:b:1.5]", 10, [(10, "a")]),  # a fraction over 1 is past the last step
    ("[a:b:0]", 4, [(4, "b")]),
    ("[a:b:-1]", 10, [(10, "b")]),
    ("[a:b:+3]", 10, [(3, "a"), (10, "b")]),
    ("[a:b:.25]", 8, [(2, "a"), (8, "b")]),
    ("[a:b:0.3]", 10, [(3, "a"), (10, "b")]),
    ("[a:b:0.33]", 4, [(1, "a"), (4, "b")]),  # 1.32 steps -> 1
    ("[a:b:2.]", 4, [(4, "a")]),  # '2.' has a '.', so a fraction: 8 steps -> 4
    ("[a:b:1e1]", 20, [(10, "a"), (20, "b")]),
    ("a [b|c] [d:e:2]", 4, [(1, "a b d"), (2, "a c d"), (3, "a b e"), (4, "a c e")]),
    ("[a|[b:c:2]]", 4, [(1, "a"), (2, "b"), (3, "a"), (4, "c")]),
    ("[a:[b|c]:2]", 4, [(1, "a"), (2, "a"), (3, "b"), (4, "c")]),
    ("[fe||]male", 4, [(1, "female"), (2, "male"), (3, "male"), (4, "female")]),
    ("[[a|b]|c]", 4, [(1, "a"), (2, "c"), (3, "a"), (4, "c")]),
    ("(a [b:c:2]:1.2)", 4, [(2, "(a b:1.2)"), (4, "(a c:1.2)")]),
    ("[a:(b:1.3):2] d", 3, [(2, "a d"), (3, "(b:1.3) d")]),
    ("[a\\:b:2]", 3, [(2, ""), (3, "a\\:b")]),  # an escaped ':' is text
    ("a [b] [c:2]", 3, [(2, "a [b] "), (3, "a [b] c")]),
    ("[(a:b):3]", 4, [(3, ""), (4, "(a:b)")]),
    ("x [a: b : 2 ] y", 3, [(2, "x a y"), (3, "x  b  y")]),
    ("[ :2]", 3, [(2, ""), (3, " ")]),
    ("[a::2] [b:2]", 3, [(2, "a "), (3, " b")]),
    ("(a:[b:c:1])", 2, [(1, "(a:b)"), (2, "(a:c)")]),
    ("a\\[b:2]", 3, [(3, "a\\[b:2]")]),  # escaped bracket: no schedule
    ("[a|b:2]", 3, [(3, "[a|b:2]")]),
    ("[a:b:c:2]", 3, [(3, "[a:b:c:2]")]),
    ("a [b:5]", 3, [(3, "a ")]),  # a step past the end: never switches
    ("[|]", 2, [(1, ""), (2, "")]),
    ("a \\| b [c:1]", 2, [(1, "a \\| b "), (2, "a \\| b c")]),
    ("a | b [c:1]", 2, [(2, "a | b [c:1]")]),
    ("(a|b) [c:1]", 2, [(2, "(a|b) [c:1]")]),
    ("a\\", 2, [(2, "a\\")]),
    ("", 3, [(3, "")]),
]


@pytest.mark.parametrize("prompt, steps, expected", SCHEDULES)
def test_schedules_match_a1111(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


AND_CASES = [
    ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),  # leading blanks stay (the tokenizer drops them)
    ("a cat AND a dog :0.5", [("a cat", 1.0), (" a dog", 0.5)]),
    ("a cat:1.2 AND a dog: -0.5 ", [("a cat", 1.2), (" a dog", -0.5)]),
    ("a cat :1.", [("a cat", 1.0)]),
    ("a cat :.5", [("a cat", 0.5)]),
    ("(a cat:1.5)", [("(a cat:1.5)", 1.0)]),  # a weight closed by ')' belongs to the emphasis
    ("(a cat:1.5", [("(a cat", 1.5)]),  # ...but an unclosed one is the sub-prompt's (as in A1111)
    ("ANDROID AND cat", [("ANDROID", 1.0), (" cat", 1.0)]),  # AND only as a word of its own
    ("cat and dog", [("cat and dog", 1.0)]),
    ("[a AND b:3]", [("[a", 1.0), (" b:3]", 1.0)]),  # AND splits before any bracket is read
    ("a AND AND b", [("a", 1.0), ("", 1.0), (" b", 1.0)]),
]


@pytest.mark.parametrize("prompt, expected", AND_CASES)
def test_and_splits_like_a1111(prompt, expected):
    assert split_and(prompt) == expected


# --- weighted pieces beyond tests/generate/test_prompt_weighting.py's table
PIECES = [
    ("(dog:-1)(s:-1)", [("dogs", -1.0)]),  # -1 pieces merge like any other weight
    ("(dog:-1) BREAK (s:-1)", [("dog", -1.0), ("BREAK", -1.0), ("s", -1.0)]),  # BREAK never merges
    ("(BREAK:-1)", [("BREAK", 1.0)]),  # the bracket scales BREAK's -1 too: the word BREAK at weight 1
    ("a BREAK BREAK b", [("a", 1.0), ("BREAK", -1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),  # scaled: no longer a break
    ("(a:1.5)(b:1.5) c", [("ab", 1.5), (" c", 1.0)]),
    ("((a)) (b:1.21)", [("a", 1.1 * 1.1), (" ", 1.0), ("b", 1.21)]),
    ("a \\(b\\) \\\\ c", [("a (b) \\ c", 1.0)]),
    ("[[a]]", [("a", (1 / 1.1) * (1 / 1.1))]),
    ("(a:0)", [("a", 0.0)]),
    ("a:b", [("a:b", 1.0)]),
]


@pytest.mark.parametrize("prompt, expected", PIECES)
def test_pieces_match_a1111(prompt, expected):
    runs = parse_prompt_weights(prompt)
    assert [text for text, _ in runs] == [text for text, _ in expected]
    assert [weight for _, weight in runs] == pytest.approx([weight for _, weight in expected])


# --- seeded random prompts, expected values known by construction
WORDS = ["cat", "dog", "red", "car", "house", "tree", "blue", "sky", "photo", "man", "woman", "green"]


def random_schedule_prompt(rng: random.Random, steps: int, depth: int = 0):
    """(prompt, text_at(step), switch steps, has alternation) built together."""
    pieces = []
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        if depth < 2 and roll < 0.25:
            before, after = (random_schedule_prompt(rng, steps, depth + 1) for _ in range(2))
            when = rng.choice(["1", "2", "3", "5", ".5", "0.25", "0.7"])
            switch = min(steps, int(float(when) * steps if "." in when else float(when)))
            pieces.append((f"[{before[0]}:{after[0]}:{when}]",
                           lambda s, b=before, a=after, w=switch: b[1](s) if s <= w else a[1](s),
                           before[2] | after[2] | ({switch} if switch >= 1 else set()), before[3] or after[3]))
        elif depth < 2 and roll < 0.4:
            added = random_schedule_prompt(rng, steps, depth + 1)
            when = rng.choice(["2", ".5"])
            switch = min(steps, int(float(when) * steps if "." in when else float(when)))
            pieces.append((f"[{added[0]}:{when}]", lambda s, a=added, w=switch: "" if s <= w else a[1](s),
                           added[2] | {switch}, added[3]))
        elif depth < 2 and roll < 0.55:
            options = [random_schedule_prompt(rng, steps, depth + 1) for _ in range(rng.randint(2, 3))]
            pieces.append(("[" + "|".join(option[0] for option in options) + "]",
                           lambda s, o=options: o[(s - 1) % len(o)][1](s),
                           set().union(*(option[2] for option in options)), True))
        elif depth < 2 and roll < 0.65:
            inner = random_schedule_prompt(rng, steps, depth + 1)
            weight = rng.choice(["", ":1.3", ":0.8"])
            pieces.append((f"({inner[0]}{weight})", lambda s, i=inner, w=weight: f"({i[1](s)}{w})", inner[2], inner[3]))
        else:
            word = rng.choice(WORDS) + rng.choice(["", " ", ", "])
            pieces.append((word, lambda s, w=word: w, set(), False))
    return ("".join(piece[0] for piece in pieces), lambda s: "".join(piece[1](s) for piece in pieces),
            set().union(*(piece[2] for piece in pieces)), any(piece[3] for piece in pieces))


@pytest.mark.parametrize("seed", range(120))
def test_random_schedules(seed):
    rng = random.Random(seed)
    steps = rng.choice([1, 3, 6, 10, 20])
    prompt, text_at, switches, alternates = random_schedule_prompt(rng, steps)
    ends = sorted(({steps} | switches | (set(range(1, steps + 1)) if alternates else set())) - {0})
    assert prompt_schedule(prompt, steps) == [(end, text_at(end)) for end in ends]


def random_weighted_prompt(rng: random.Random, max_words: int):
    """(prompt, [(text, weight), ...] before merging), words wrapped in random brackets."""
    fragments, runs = [], []
    for index in range(rng.randint(1, max_words)):
        if index:
            separator = rng.choice([" ", " ", ", ", " BREAK "] if max_words < 20 else [" "] * 6 + [", "] * 3 + [" BREAK "])
            fragments.append(separator)
            runs.append(("BREAK", -1.0) if separator == " BREAK " else (separator, 1.0))
        word, weight = rng.choice(WORDS), 1.0
        text = word
        for _ in range(rng.choice([0, 0, 1, 2, 3])):  # inner bracket first: its factor multiplies first, as in A1111
            kind = rng.choice(["round", "square", "explicit"])
            if kind == "round":
                text, weight = f"({text})", weight * 1.1
            elif kind == "square":
                text, weight = f"[{text}]", weight * (1 / 1.1)
            else:
                factor = rng.choice(["0.5", "1.3", "2", "0.8", "1.1", "1.21"])
                text, weight = f"({text}:{factor})", weight * float(factor)
        fragments.append(text)
        runs.append((word, weight))
    return "".join(fragments), runs


def merged(runs):
    out = []
    for text, weight in runs:
        if out and out[-1][1] == weight:
            out[-1] = (out[-1][0] + text, weight)
        else:
            out.append((text, weight))
    return out


@pytest.mark.parametrize("seed", range(100))
def test_random_pieces(seed):
    prompt, runs = random_weighted_prompt(random.Random(1000 + seed), 10)
    assert parse_prompt_weights(prompt) == merged(runs)


@pytest.fixture(scope="module")
def pipeline():
    return build_preset("tiny-sd")


def rule_chunks(tokens: list[tuple[int, float]], comma: int, backtrack: int, size: int = 75) -> list[list[tuple[int, float]]]:
    """A1111's chunking as it states it: fill `size` tokens; a BREAK (None) ends a chunk; when the chunk is full
    and the next token is no comma, a comma at most `backtrack` tokens from the end ends it instead, and the
    tokens after the comma begin the next chunk; an empty prompt is one empty chunk."""
    chunks, chunk = [], []
    for token in tokens:
        if token is None:
            chunks.append(chunk)
            chunk = []
            continue
        commas = [index for index, (token_id, _) in enumerate(chunk) if token_id == comma]
        if (token[0] != comma and backtrack and len(chunk) == size and commas
                and len(chunk) - commas[-1] <= backtrack):
            chunks.append(chunk[:commas[-1] + 1])
            chunk = chunk[commas[-1] + 1:]
        if len(chunk) == size:
            chunks.append(chunk)
            chunk = []
        chunk.append(token)
    if chunk or not chunks:
        chunks.append(chunk)
    return chunks


def windows_as_chunks(pipeline, prompt: str, backtrack: int):
    windows = prompt_windows(pipeline, pipeline.tokenizer, prompt, backtrack)
    return [list(zip(w.token_ids[1:w.length - 1], w.weights[1:w.length - 1])) for w in windows]


def token_list(pipeline, runs):
    tokens = []
    for text, weight in runs:
        if (text, weight) == ("BREAK", -1.0):
            tokens.append(None)
        else:
            tokens += [(token_id, weight) for token_id in pipeline.tokenizer(text, add_special_tokens=False).input_ids]
    return tokens


COMMA = 267  # ',</w>' in CLIP's vocabulary


def test_hand_written_chunks_count_one_token_per_word(pipeline):
    assert pipeline.tokenizer("dog cat, dog", add_special_tokens=False).input_ids[1:3] == [
        pipeline.tokenizer.convert_tokens_to_ids("cat</w>"), COMMA]
    assert len(pipeline.tokenizer("dog " * 10 + "cat " * 10, add_special_tokens=False).input_ids) == 20


@pytest.mark.parametrize("prompt, backtrack, lengths", [
    ("dog " * 72 + ", " + "cat " * 5, 20, [73, 5]),  # the example
    ("dog " * 72 + ", " + "cat " * 5, 0, [75, 3]),  # back-off off: cut at exactly 75
    ("dog " * 55 + ", " + "cat " * 25, 20, [56, 25]),  # the comma 20 tokens from the end: the rest moves
    ("dog " * 55 + ", " + "cat " * 25, 19, [75, 6]),  # ... but not with 19
    ("dog " * 54 + ", " + "cat " * 25, 20, [75, 5]),  # 21 tokens: too far
    ("dog " * 75 + ", cat", 20, [75, 2]),  # a comma as the 76th token starts the next chunk
    ("dog " * 74 + ", cat", 20, [75, 1]),  # a comma as the 75th token stays
    ("dog, " * 40, 20, [75, 5]),  # the 76th token is a comma: no back-off
    ("dog " * 75 + "BREAK cat", 20, [75, 1]),  # a BREAK after a full chunk adds no empty one
    ("BREAK cat", 20, [0, 1]),
    ("cat BREAK", 20, [1]),
    ("", 20, [0]),
    ("dog " * 150, 20, [75, 75]),
    ("dog " * 70 + ", " + "cat " * 80 + ", dog " + "cat " * 5, 20, [71, 75, 12]),
])
def test_chunk_lengths(pipeline, prompt, backtrack, lengths):
    assert [len(chunk) for chunk in windows_as_chunks(pipeline, prompt, backtrack)] == lengths


@pytest.mark.parametrize("seed", range(100))
def test_random_chunks_and_token_weights(pipeline, seed):
    rng = random.Random(5000 + seed)
    prompt, runs = random_weighted_prompt(rng, 190)
    backtrack = rng.choice([0, 5, 20, 20, 40])
    expected = rule_chunks(token_list(pipeline, merged(runs)), COMMA, backtrack)
    assert windows_as_chunks(pipeline, prompt, backtrack) == expected
