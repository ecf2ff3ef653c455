"""Extract a LoRA from two models of one architecture: a truncated SVD of each weight difference."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping

import torch

from tunelab.errors import TunelabError
from tunelab.formats.lora_set import LoraModule, LoraSet, split_component
from tunelab.lora.modules import is_spatial_conv
from tunelab.lora.svd import clamp_to_quantile, truncated_svd

# Largest batch of stacked differences, in values (1 GiB in fp32): batching helps GPU SVDs of many small matrices.
BATCH_VALUES = 2**28


@dataclass
class ExtractSettings:
    rank: int  # linear layers and 1x1 convolutions
    conv_rank: int | None = None  # convolutions with larger kernels; None leaves them out
    # None: --rank, for every module. One alpha for all keeps diffusers' loader off its per-module
    # alpha path (alpha_pattern), which drops the alphas of kohya mid-block attention modules.
    alpha: float | None = None
    clamp_quantile: float = 0.99  # 1.0: no clamping
    min_diff: float = 0.01  # text encoder left out when no weight moved more than this

    def validate(self) -> None:
        if self.rank < 1 or (self.conv_rank is not None and self.conv_rank < 1):
            raise TunelabError("--rank and --conv-rank must be at least 1")
        if self.alpha is not None and self.alpha <= 0:
            raise TunelabError(f"--alpha must be positive, got {self.alpha}")
        if not 0.0 < self.clamp_quantile <= 1.0:
            raise TunelabError(f"--clamp-quantile must be in (0, 1], got {self.clamp_quantile}")
        if self.min_diff < 0:
            raise TunelabError(f"--min-diff must not be negative, got {self.min_diff}")


@dataclass
class Extraction:
    lora: LoraSet
    notes: list[str] = field(default_factory=list)


def check_same_architecture(base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor]) -> None:
    only_base = sorted(set(base) - set(tuned))
    only_tuned = sorted(set(tuned) - set(base))
    reshaped = sorted(
        f"{key} {tuple(base[key].shape)} vs {tuple(tuned[key].shape)}" for key in set(base) & set(tuned) if base[key].shape != tuned[key].shape
    )
    problems = []
    if reshaped:
        problems.append(f"{len(reshaped)} modules differ in shape, e.g. {reshaped[0]}")
    if only_base or only_tuned:
        example = (only_base or only_tuned)[0]
        problems.append(f"{len(only_base)} modules only in the base and {len(only_tuned)} only in the tuned model, e.g. {example}")
    if problems:
        raise TunelabError(f"the base and tuned models have different architectures: {'; '.join(problems)}")


def _largest_differences(base, tuned, keys) -> dict[str, float]:
    return {key: float((tuned[key].float() - base[key].float()).abs().max()) for key in keys}


def _is_text_encoder(key: str) -> bool:
    return split_component(key)[0].startswith("text_encoder")


def _batches(keys: list[str], shape: torch.Size) -> list[list[str]]:
    per_batch = max(1, BATCH_VALUES // shape.numel())
    return [keys[start : start + per_batch] for start in range(0, len(keys), per_batch)]


def _factorize(deltas: torch.Tensor, rank: int, settings: ExtractSettings) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Deltas (B, out, n) -> up (B, out, rank), down (B, rank, n) and alpha, with scale * up @ down ~ delta."""
    u, s, vh = truncated_svd(deltas, rank)  # (B, out, r), (B, r), (B, r, n)
    up, down = clamp_to_quantile(u * s[:, None, :], vh, settings.clamp_quantile)  # kohya's split: up = U·S, down = Vh
    alpha = float(settings.alpha if settings.alpha is not None else settings.rank)
    return up * (rank / alpha), down, alpha  # the scale alpha / rank is undone in up


def extract_lora(
    base: Mapping[str, torch.Tensor],
    tuned: Mapping[str, torch.Tensor],
    settings: ExtractSettings,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Extraction:
    """LoRA factors for `tuned - base`, per "<component>.<module path>" weight of both models."""
    from tqdm.auto import tqdm

    settings.validate()
    check_same_architecture(base, tuned)
    notes: list[str] = []
    keys = sorted(base)
    spatial = {key for key in keys if is_spatial_conv(base[key].shape)}
    if spatial and settings.conv_rank is None:
        notes.append(f"{len(spatial)} convolutions with kernels larger than 1x1 left out (give --conv-rank to extract them)")
        keys = [key for key in keys if key not in spatial]

    largest = _largest_differences(base, tuned, keys)
    text_keys = [key for key in keys if _is_text_encoder(key)]
    if text_keys:
        text_largest = max(largest[key] for key in text_keys)
        if text_largest <= settings.min_diff:
            notes.append(f"text encoder: largest weight difference {text_largest:.3g} is not above --min-diff {settings.min_diff:g}; extracting the UNet only")
            keys = [key for key in keys if not _is_text_encoder(key)]
        else:
            notes.append(f"text encoder differs (largest weight difference {text_largest:.3g} > --min-diff {settings.min_diff:g}); extracted")
    unchanged = [key for key in keys if largest[key] == 0.0]
    if unchanged:
        notes.append(f"{len(unchanged)} modules are identical in both models and left out")
        keys = [key for key in keys if largest[key] != 0.0]
    if not keys:
        raise TunelabError("the two models do not differ in any module a LoRA can hold; nothing to extract")

    groups: dict[tuple, list[str]] = defaultdict(list)  # same shape and rank -> one batched SVD
    for key in keys:
        groups[tuple(base[key].shape)].append(key)
    lora: LoraSet = {}
    clamped: list[tuple[int, str]] = []
    with tqdm(total=len(keys), unit="module", desc="extracting", disable=not progress) as bar:
        for shape, group in groups.items():
            shape = torch.Size(shape)
            wanted = settings.conv_rank if is_spatial_conv(shape) else settings.rank
            rank = min(wanted, shape[0], shape[1:].numel())
            if rank < wanted:
                clamped += [(rank, key) for key in group]
            for batch in _batches(group, shape):
                deltas = torch.stack(
                    [(tuned[key].to(device, torch.float32) - base[key].to(device, torch.float32)).flatten(1) for key in batch]
                )  # (B, out, in*kh*kw)
                up, down, alpha = _factorize(deltas, rank, settings)
                for index, key in enumerate(batch):
                    kernel = [1] * (len(shape) - 2)  # conv up is (out, r, 1, 1)
                    lora[key] = LoraModule(
                        down[index].reshape(rank, *shape[1:]).cpu(),  # (r, in[, kh, kw])
                        up[index].reshape(shape[0], rank, *kernel).cpu(),  # (out, r[, 1, 1])
                        alpha,
                    )
                bar.update(len(batch))
    if clamped:
        smallest_rank, smallest_key = min(clamped)
        notes.append(
            f"{len(clamped)} modules allow less than the requested rank and were extracted at their full rank "
            f"min(out, in x kernel) instead (smallest: {smallest_rank}, {smallest_key})"
        )
    return Extraction(lora, notes)


def differences_outside(base_state: Mapping[str, torch.Tensor], tuned_state: Mapping[str, torch.Tensor], covered: set[str]) -> tuple[int, float]:
    """How many other tensors (biases, norms, embeddings) differ, and by at most how much: what a LoRA cannot carry."""
    changed, largest = 0, 0.0
    for name, tensor in base_state.items():
        if name in covered or name not in tuned_state or not tensor.is_floating_point():
            continue
        difference = float((tuned_state[name].float() - tensor.float()).abs().max()) if tensor.numel() else 0.0
        if difference > 0:
            changed, largest = changed + 1, max(largest, difference)
    return changed, largest
