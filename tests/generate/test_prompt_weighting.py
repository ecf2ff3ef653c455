"""A1111 prompt weighting: the parser's table, 75-token windows, per-token weights with mean restoration."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run_cli
from tunelab.generation.prompt_encoding import apply_weights, encode_prompt_pair, prompt_windows
from tunelab.generation.prompt_weighting import parse_prompt_weights
from tunelab.models.presets import build_preset

PARSER_TABLE = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("a [quiet] word", [("a ", 1.0), ("quiet", 1 / 1.1), (" word", 1.0)]),
    ("(close-up shot:1.8), x", [("close-up shot", 1.8), (", x", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("a \\(b\\) (c)", [("a (b) ", 1.0), ("c", 1.1)]),
    (  # A1111's own doctest: nesting multiplies
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [("a ", 1.0), ("house", 1.3 * 1.1 * 1.1), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
         (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)],
    ),
    ("a cat BREAK (a dog)", [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.1)]),
    ("BREAKFAST break", [("BREAKFAST break", 1.0)]),  # BREAK only as a word of its own, upper case
    ("(unbalanced", [("unbalanced", 1.1)]),  # an unclosed '(' weights the rest
    ("stray) and ] (ok:2)", [("stray) and ] ", 1.0), ("ok", 2.0)]),  # stray closers are text
    ("odd:1.2) colon", [("odd:1.2) colon", 1.0)]),
    ("", [("", 1.0)]),
]


@pytest.mark.parametrize("prompt, expected", PARSER_TABLE)
def test_parser_matches_a1111(prompt, expected):
    runs = parse_prompt_weights(prompt)
    assert [text for text, _ in runs] == [text for text, _ in expected]
    assert [weight for _, weight in runs] == pytest.approx([weight for _, weight in expected])


def test_unbalanced_brackets_warn(caplog):
    with caplog.at_level(logging.WARNING):
        parse_prompt_weights("(open and stray)]")
    assert "unmatched ']'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        parse_prompt_weights("((open")
    assert "2 unclosed" in caplog.text


def embeds(pipeline, prompt, negative_prompt=""):
    inputs = encode_prompt_pair(pipeline, prompt, negative_prompt)
    return inputs["prompt_embeds"], inputs["negative_prompt_embeds"]


@pytest.fixture(scope="module")
def pipeline():
    return build_preset("tiny-sd")


def test_plain_prompt_encodes_exactly_as_diffusers(pipeline):
    ours = embeds(pipeline, "a photo of sks toy", "blurry")
    theirs = pipeline.encode_prompt("a photo of sks toy", "cpu", 1, True, "blurry")
    assert ours[0].shape == (1, 77, pipeline.text_encoder.config.hidden_size)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_weights_scale_only_the_weighted_tokens(pipeline):
    tokenizer = pipeline.tokenizer
    (window,) = prompt_windows(pipeline, tokenizer, "a (red:1.5) car")
    (plain_window,) = prompt_windows(pipeline, tokenizer, "a red car")
    assert window.token_ids == plain_window.token_ids  # weighting never changes the tokens
    red = len(tokenizer("a ", add_special_tokens=False).input_ids)
    red_end = red + len(tokenizer("red", add_special_tokens=False).input_ids)
    expected = [1.0] * 77
    expected[1 + red:1 + red_end] = [1.5] * (red_end - red)  # +1: BOS
    assert window.weights == expected

    plain, _ = embeds(pipeline, "a red car")  # (1, 77, D)
    weights = torch.tensor(window.weights)
    unrestored = apply_weights(plain, weights, restore_mean=False)
    changed = (unrestored != plain).any(dim=-1)[0]  # (77,)
    assert changed.tolist() == [weight != 1.0 for weight in expected]

    weighted, _ = embeds(pipeline, "a (red:1.5) car")
    assert torch.allclose(weighted.mean(), plain.mean(), atol=1e-6)  # mean restoration
    ratio = weighted / plain  # (1, 77, D): one constant off the weighted tokens, 1.5x it on them
    scale = ratio[0, 0, 0]
    assert torch.allclose(ratio[0, ~changed], scale.expand_as(ratio[0, ~changed]), rtol=1e-4)
    assert torch.allclose(ratio[0, changed], (1.5 * scale).expand_as(ratio[0, changed]), rtol=1e-4)


def test_long_prompt_and_break_make_windows_and_negative_is_padded(pipeline):
    tokenizer = pipeline.tokenizer
    long_prompt = " ".join(["red car"] * 40)
    n_tokens = len(tokenizer(long_prompt, add_special_tokens=False).input_ids)
    assert 75 < n_tokens <= 150
    windows = prompt_windows(pipeline, tokenizer, long_prompt)
    assert [w.length for w in windows] == [77, n_tokens - 75 + 2]
    assert all(w.token_ids[0] == tokenizer.bos_token_id and len(w.token_ids) == 77 for w in windows)
    positive, negative = embeds(pipeline, long_prompt, "blurry")
    assert positive.shape == negative.shape == (1, 154, pipeline.text_encoder.config.hidden_size)
    empty, _ = embeds(pipeline, "")
    assert torch.equal(negative[:, 77:], empty)  # padded with the empty prompt's encoding

    first, second = prompt_windows(pipeline, tokenizer, "a cat BREAK a dog")
    assert first.length == len(tokenizer("a cat", add_special_tokens=False).input_ids) + 2
    assert first.token_ids[first.length:] == [tokenizer.pad_token_id] * (77 - first.length)
    assert second.token_ids[:second.length] == tokenizer("a dog").input_ids


def test_generate_applies_weights_and_can_turn_them_off(tmp_path):
    args = ["generate", "--model", "tiny-sd", "--steps", "4", "--seed", "3", "--sampler", "euler"]
    assert run_cli(*args, "--prompt", "a red car", "--out", tmp_path / "plain.png") == 0
    assert run_cli(*args, "--prompt", "a (red:1.5) car", "--out", tmp_path / "weighted.png") == 0
    assert run_cli(*args, "--prompt", "a (red:1.5) car", "--no-prompt-weighting", "--out", tmp_path / "literal.png") == 0
    plain, weighted, literal = (np.asarray(Image.open(tmp_path / f"{name}.png"), dtype=int)
                                for name in ("plain", "weighted", "literal"))
    assert np.abs(plain - weighted).max() > 0
    assert np.abs(weighted - literal).max() > 0  # off: the brackets are just text


def test_negative_comma_backtrack_is_refused(tmp_path, capsys):
    assert run_cli("generate", "--model", "tiny-sd", "--prompt", "a, b", "--comma-backtrack", "-1",
                   "--out", tmp_path / "x.png") == 2
    assert "--comma-backtrack must be 0 (off) or more" in capsys.readouterr().err
