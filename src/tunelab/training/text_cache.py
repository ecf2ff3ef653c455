"""Encode each distinct caption with the (frozen) text encoders once.

A frozen encoder gives the same conditioning for the same caption every time, so a run with the
cache trains as one without it. Each caption is encoded alone and kept as a batch of one; a
batch is put together from those rows. Tensors the family returns without a per-caption batch
dimension (e.g. Flux's text position ids) are the same for every caption and are passed on as is.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


class TextEmbeddingCache:
    def __init__(self, family, on_miss=nullcontext):
        self.family = family
        self.on_miss = on_miss  # context around the encoders' work (e.g. bringing offloaded encoders to the GPU)
        self._store: dict[str, dict[str, torch.Tensor]] = {}  # caption -> conditioning of a batch of one

    def __len__(self) -> int:
        return len(self._store)

    def encode_prompts(self, captions: list[str]) -> dict[str, torch.Tensor]:
        missing = [caption for caption in dict.fromkeys(captions) if caption not in self._store]
        if missing:
            with self.on_miss(), torch.no_grad():
                for caption in missing:
                    self._store[caption] = self.family.encode_prompts([caption])
        rows = [self._store[caption] for caption in captions]
        return {key: _join([row[key] for row in rows]) for key in rows[0]}


def _join(values: list[torch.Tensor]) -> torch.Tensor:
    if values[0].shape[:1] == (1,):
        return torch.cat(values)  # (B, ...) from B rows of (1, ...)
    return values[0]
