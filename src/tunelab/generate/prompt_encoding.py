"""Weighted prompts -> `prompt_embeds` / `negative_prompt_embeds` for a Stable Diffusion pipeline, as A1111 does.

The prompt's tokens are cut into windows of 75 (a `BREAK` starts a new one); each window is
wrapped in BOS/EOS, padded to 77, encoded on its own, and the windows are concatenated along the
sequence axis. Each token's output vector is multiplied by its weight, then the window is scaled
so its mean is what it was before ("mean restoration"). A plain prompt of <= 75 tokens gives the
same tensor as diffusers' own `encode_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.generate.prompt_weighting import BREAK, BREAK_WEIGHT, parse_prompt_weights


@dataclass
class Window:
    token_ids: list[int]  # BOS + up to 75 tokens + EOS + padding: model_max_length ids
    weights: list[float]  # one per id; 1.0 on BOS/EOS/padding
    length: int  # ids up to and including EOS (the rest is padding)


def _close_window(tokenizer, ids: list[int], weights: list[float]) -> Window:
    padding = tokenizer.model_max_length - 2 - len(ids)
    token_ids = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * padding
    return Window(token_ids, [1.0, *weights, 1.0] + [1.0] * padding, len(ids) + 2)


def prompt_windows(pipeline, tokenizer, prompt: str) -> list[Window]:
    """Tokenize each weighted run separately (as A1111 does) and fill 75-token windows."""
    window_size = tokenizer.model_max_length - 2  # 75 for CLIP
    windows: list[Window] = []
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in parse_prompt_weights(prompt):
        if text == BREAK and weight == BREAK_WEIGHT:
            windows.append(_close_window(tokenizer, ids, weights))
            ids, weights = [], []
            continue
        if hasattr(pipeline, "maybe_convert_prompt"):
            text = pipeline.maybe_convert_prompt(text, tokenizer)  # a multi-vector embedding token -> its n tokens
        for token_id in tokenizer(text, add_special_tokens=False, truncation=False).input_ids:
            if len(ids) == window_size:
                windows.append(_close_window(tokenizer, ids, weights))
                ids, weights = [], []
            ids.append(token_id)
            weights.append(weight)
    if ids or not windows:
        windows.append(_close_window(tokenizer, ids, weights))
    return windows


def apply_weights(hidden: torch.Tensor, weights: torch.Tensor, restore_mean: bool = True) -> torch.Tensor:
    """Scale each token's vector by its weight; then keep the window's overall mean (A1111)."""
    original_mean = hidden.mean()
    weighted = hidden * weights.to(hidden.dtype)[None, :, None]  # (1, 77, D)
    if not restore_mean:
        return weighted
    return weighted * (original_mean / weighted.mean())  # (1, 77, D)


@torch.no_grad()
def encode_windows(text_encoder, windows: list[Window], device) -> torch.Tensor:
    """Each window through the text encoder on its own, weighted, then joined along the sequence."""
    encoded = []
    for window in windows:
        ids = torch.tensor([window.token_ids], device=device)  # (1, 77)
        attention_mask = None
        if getattr(text_encoder.config, "use_attention_mask", False):
            attention_mask = (torch.arange(ids.shape[1], device=device) < window.length).long()[None]  # (1, 77)
        hidden = text_encoder(ids, attention_mask=attention_mask)[0]  # (1, 77, D)
        hidden = hidden.to(dtype=text_encoder.dtype, device=device)
        if any(weight != 1.0 for weight in window.weights):
            hidden = apply_weights(hidden, torch.tensor(window.weights, device=device))
        encoded.append(hidden)
    return torch.cat(encoded, dim=1)  # (1, 77 * n_windows, D)


def encode_prompt_pair(pipeline, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, negative_prompt_embeds), the shorter padded with empty windows to the other's length."""
    tokenizer, text_encoder = pipeline.tokenizer, pipeline.text_encoder
    device = pipeline._execution_device
    positive = prompt_windows(pipeline, tokenizer, prompt)
    negative = prompt_windows(pipeline, tokenizer, negative_prompt)
    empty = _close_window(tokenizer, [], [])  # A1111 pads with the empty prompt's encoding
    count = max(len(positive), len(negative))
    positive += [empty] * (count - len(positive))
    negative += [empty] * (count - len(negative))
    return encode_windows(text_encoder, positive, device), encode_windows(text_encoder, negative, device)
