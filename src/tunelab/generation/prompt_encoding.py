"""Weighted prompts -> `prompt_embeds` / `negative_prompt_embeds` for SD and SDXL pipelines, as A1111 does.

The prompt's tokens are cut into windows of 75 (a `BREAK` starts a new one, and a window may end early
at a comma near its end: A1111's comma back-off); each window is
wrapped in BOS/EOS, padded to 77, encoded on its own, and the windows are concatenated along the
sequence axis. Each token's output vector is multiplied by its weight, then the window is scaled
so its mean is what it was before ("mean restoration"). A plain prompt of <= 75 tokens gives the
same tensor as diffusers' own `encode_prompt`. SDXL runs this for each of its two text encoders (the
family says which hidden layer each contributes) and puts them side by side; its pooled vector is the
second encoder's, from the first window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.errors import TunelabError

from tunelab.generation.prompt_weighting import BREAK, BREAK_WEIGHT, parse_prompt_weights
from tunelab.models.family import family_for


@dataclass
class Window:
    token_ids: list[int]  # BOS + up to 75 tokens + EOS + padding: model_max_length ids
    weights: list[float]  # one per id; 1.0 on BOS/EOS/padding
    length: int  # ids up to and including EOS (the rest is padding)


def _close_window(tokenizer, ids: list[int], weights: list[float]) -> Window:
    padding = tokenizer.model_max_length - 2 - len(ids)
    token_ids = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * padding
    return Window(token_ids, [1.0, *weights, 1.0] + [1.0] * padding, len(ids) + 2)


COMMA_BACKTRACK = 20  # A1111's default `comma_padding_backtrack`


def prompt_windows(pipeline, tokenizer, prompt: str, comma_backtrack: int = COMMA_BACKTRACK) -> list[Window]:
    """Tokenize each weighted run separately (as A1111 does) and fill 75-token windows.

    When a window is full and its last comma is at most `comma_backtrack` tokens back, the tokens after
    that comma move to the next window, so a phrase is not cut in two (A1111's comma back-off; 0 = off)."""
    window_size = tokenizer.model_max_length - 2  # 75 for CLIP
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    comma = None if comma == tokenizer.unk_token_id else comma
    windows: list[Window] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1  # position in `ids` of the window's last comma

    def close(keep_from: int | None = None) -> None:
        nonlocal ids, weights, last_comma
        cut = len(ids) if keep_from is None else keep_from
        windows.append(_close_window(tokenizer, ids[:cut], weights[:cut]))
        ids, weights, last_comma = ids[cut:], weights[cut:], -1

    for text, weight in parse_prompt_weights(prompt):
        if text == BREAK and weight == BREAK_WEIGHT:
            close()
            continue
        if hasattr(pipeline, "maybe_convert_prompt"):
            text = pipeline.maybe_convert_prompt(text, tokenizer)  # a multi-vector embedding token -> its n tokens
        for token_id in tokenizer(text, add_special_tokens=False, truncation=False).input_ids:
            if token_id == comma:
                last_comma = len(ids)
            elif comma_backtrack and len(ids) == window_size and last_comma != -1 and len(ids) - last_comma <= comma_backtrack:
                close(keep_from=last_comma + 1)
            if len(ids) == window_size:
                close()
            ids.append(token_id)
            weights.append(weight)
    if ids or not windows:
        close()
    return windows


# Below this fraction of the vectors' mean magnitude, a window's mean is rounding noise, not a value to divide by.
MEAN_NOISE = 1e-4


def apply_weights(hidden: torch.Tensor, weights: torch.Tensor, restore_mean: bool = True) -> torch.Tensor:
    """Scale each token's vector by its weight; then keep the window's overall mean (A1111)."""
    original_mean = hidden.mean()
    weighted = hidden * weights.to(hidden.dtype)[None, :, None]  # (1, 77, D)
    if not restore_mean:
        return weighted
    weighted_mean = weighted.mean()
    restored = weighted * (original_mean / weighted_mean)  # (1, 77, D)
    if not torch.isfinite(restored).all() or weighted_mean.abs() <= MEAN_NOISE * hidden.abs().mean():
        # The weighted window's mean is (about) zero on this model (an encoder whose final norm has no bias gives
        # zero-mean vectors): A1111's division gives NaN/inf, or rounding noise picks the scale and even the sign.
        raise TunelabError("the prompt's weights cancel out on this model (A1111's mean restoration divides by "
                           "about zero); change the weights, or use --no-prompt-weighting")
    return restored


@torch.no_grad()
def encode_windows(family, name: str, windows: list[Window], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each window through one text encoder on its own, weighted, then joined along the sequence;
    with the pooled vector of the first window where the encoder has one (SDXL), as A1111 does."""
    text_encoder = family.module(name)
    encoded, pooled = [], None
    for window in windows:
        ids = torch.tensor([window.token_ids], device=device)  # (1, 77)
        attention_mask = None
        if getattr(text_encoder.config, "use_attention_mask", False):
            attention_mask = (torch.arange(ids.shape[1], device=device) < window.length).long()[None]  # (1, 77)
        hidden, window_pooled = family.encode_text(name, ids, attention_mask)  # (1, 77, D), (1, P) or None
        hidden = hidden.to(dtype=text_encoder.dtype, device=device)
        if pooled is None and window_pooled is not None:
            pooled = window_pooled.to(dtype=text_encoder.dtype, device=device)
        if any(weight != 1.0 for weight in window.weights):
            hidden = apply_weights(hidden, torch.tensor(window.weights, device=device))
        encoded.append(hidden)
    return torch.cat(encoded, dim=1), pooled  # (1, 77 * n_windows, D)


def encode_prompt(family, windows_per_encoder: dict[str, list[Window]], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every text encoder's windows, side by side along the feature axis (SDXL: 768 + 1280 = 2048)."""
    hidden_states, pooled = [], None
    for name, windows in windows_per_encoder.items():
        hidden, encoder_pooled = encode_windows(family, name, windows, device)
        hidden_states.append(hidden)
        pooled = encoder_pooled if encoder_pooled is not None else pooled
    return torch.cat(hidden_states, dim=-1), pooled


def encode_texts(pipeline, texts: list[str], comma_backtrack: int = COMMA_BACKTRACK) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Each text -> (embeddings, pooled vector or None), all padded with empty windows to the longest's window
    count (as A1111 pads a negative prompt), so any of them can share a batch."""
    family = family_for(pipeline)
    windows = {
        text: {name: prompt_windows(pipeline, family.tokenizer_for(name), text, comma_backtrack) for name in family.text_encoder_names}
        for text in texts
    }
    count = max(len(encoder_windows) for per_encoder in windows.values() for encoder_windows in per_encoder.values())
    for per_encoder in windows.values():
        for name, encoder_windows in per_encoder.items():
            empty = _close_window(family.tokenizer_for(name), [], [])  # A1111 pads with the empty prompt's encoding
            encoder_windows += [empty] * (count - len(encoder_windows))
    return {text: encode_prompt(family, per_encoder, pipeline._execution_device) for text, per_encoder in windows.items()}


def encode_prompt_pair(pipeline, prompt: str, negative_prompt: str = "", comma_backtrack: int = COMMA_BACKTRACK,
                       zero_negative: bool = False) -> dict[str, torch.Tensor]:
    """The pipeline's prompt arguments: `prompt_embeds` and `negative_prompt_embeds` (plus the pooled
    pair for SDXL), the shorter of the two padded with empty windows to the other's length; with
    `zero_negative`, zeros of the prompt's shapes stand for the negative."""
    if zero_negative:
        positive = encode_texts(pipeline, [prompt], comma_backtrack)[prompt]
        return pipeline_inputs(positive, zero_encoding(positive))
    encoded = encode_texts(pipeline, [prompt, negative_prompt], comma_backtrack)
    return pipeline_inputs(encoded[prompt], encoded[negative_prompt])


def zero_encoding(like: tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Zero embeddings (and pooled vector) of an encoding's shapes: the unconditional input diffusers'
    SDXL pipeline uses for an absent negative prompt (`force_zeros_for_empty_prompt`)."""
    embeds, pooled = like
    return torch.zeros_like(embeds), None if pooled is None else torch.zeros_like(pooled)  # (1, L, D), (1, P)


def pipeline_inputs(positive: tuple, negative: tuple) -> dict[str, torch.Tensor]:
    (prompt_embeds, pooled), (negative_embeds, negative_pooled) = positive, negative
    inputs = {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_embeds}
    if pooled is not None:
        inputs |= {"pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}
    return inputs
