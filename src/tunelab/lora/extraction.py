"""Extract a LoRA from two models of one architecture: a truncated SVD of each weight difference."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal, Mapping

import torch
from tqdm.auto import tqdm

from tunelab.errors import TunelabError
from tunelab.formats.lora_set import LoraModule, LoraSet, split_component
from tunelab.lora.clamp import ClampMode, clamp_factors
from tunelab.lora.modules import is_spatial_conv
from tunelab.lora.svd import truncated_svd, with_sign_convention

# Largest batch of stacked differences, in values (1 GiB in fp32): batching helps GPU SVDs of many small matrices.
BATCH_VALUES = 2**28
# A module whose rank-r factors reproduce its difference to within this share of its norm (Frobenius)
# is held exactly: a clamp there could only move the LoRA away from the difference, so none is applied.
# Rounding in fp32 (the weights' own and the SVD's) stays near 1e-6; a rank that drops anything real
# leaves far more than 1e-4.
EXACT_TOLERANCE = 1e-4

ModuleSet = Literal["kohya", "all"]
# kohya's networks/lora.py adapts the Linear and Conv2d children of these blocks of SD 1.x/2.x and
# SDXL models; in diffusers' layout each sits under a path segment of its own: Transformer2DModel
# under `attentions`, CLIPAttention and CLIPMLP under `self_attn` and `mlp`. With a conv rank it
# adds ResnetBlock2D, Downsample2D and Upsample2D (`resnets`, `downsamplers`, `upsamplers`), whose
# 3x3 convs take the conv rank and whose time_emb_proj and 1x1 conv_shortcut take the rank.
KOHYA_UNET_BLOCKS = {"attentions"}
KOHYA_UNET_CONV_BLOCKS = {"resnets", "downsamplers", "upsamplers"}
KOHYA_TEXT_ENCODER_BLOCKS = {"self_attn", "mlp"}
KOHYA_COMPONENTS = ("unet", "text_encoder")  # text_encoder_2 (SDXL) starts with it


@dataclass
class ExtractSettings:
    rank: int  # linear layers and 1x1 convolutions
    conv_rank: int | None = None  # convolutions with larger kernels; None leaves them out
    # None: --rank, for every module. One alpha for all keeps diffusers' loader off its per-module
    # alpha path (alpha_pattern), which drops the alphas of kohya mid-block attention modules.
    alpha: float | None = None
    clamp_quantile: float = 0.99  # 1.0: no clamping
    min_diff: float = 0.01  # text encoder left out when no weight moved more than this
    clamp_mode: ClampMode = "absolute"  # see tunelab.lora.clamp
    modules: ModuleSet = "all"  # every Linear and Conv2d, or kohya's set

    def validate(self) -> None:
        if self.rank < 1 or (self.conv_rank is not None and self.conv_rank < 1):
            raise TunelabError("--rank and --conv-rank must be at least 1")
        if self.alpha is not None and self.alpha <= 0:
            raise TunelabError(f"--alpha must be positive, got {self.alpha}")
        if not 0.0 < self.clamp_quantile <= 1.0:
            raise TunelabError(f"--clamp-quantile must be in (0, 1], got {self.clamp_quantile}")
        if self.min_diff < 0:
            raise TunelabError(f"--min-diff must not be negative, got {self.min_diff}")
        if self.clamp_mode not in ("kohya", "absolute"):
            raise TunelabError(f"--clamp-mode must be kohya or absolute, got {self.clamp_mode!r}")
        if self.modules not in ("kohya", "all"):
            raise TunelabError(f"--modules must be kohya or all, got {self.modules!r}")


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


def in_kohya_set(key: str, with_convs: bool) -> bool:
    """Whether kohya's extractor (networks/lora.py's module choice) adapts this module of an SD/SDXL model."""
    component, path = split_component(key)
    segments = set(path.split("."))
    if component.startswith("text_encoder"):
        return bool(segments & KOHYA_TEXT_ENCODER_BLOCKS)
    blocks = KOHYA_UNET_BLOCKS | KOHYA_UNET_CONV_BLOCKS if with_convs else KOHYA_UNET_BLOCKS
    return component == "unet" and bool(segments & blocks)


def _kohya_subset(keys: list[str], with_convs: bool, notes: list[str]) -> list[str]:
    foreign = sorted({split_component(key)[0] for key in keys if not split_component(key)[0].startswith(KOHYA_COMPONENTS)})
    if foreign:
        raise TunelabError(
            f"--modules kohya follows kohya's extract_lora_from_models.py, which handles SD 1.x/2.x and SDXL models; "
            f"this model has {', '.join(foreign)}: use --modules all"
        )
    kept = [key for key in keys if in_kohya_set(key, with_convs)]
    left_out = [key for key in keys if key not in kept]
    if left_out:
        names = sorted({split_component(key)[1].rsplit(".", 1)[-1] for key in left_out})
        notes.append(f"--modules kohya: {len(left_out)} modules outside kohya's set left out ({', '.join(names)})")
    return kept


def _batches(keys: list[str], shape: torch.Size) -> list[list[str]]:
    per_batch = max(1, BATCH_VALUES // shape.numel())
    return [keys[start : start + per_batch] for start in range(0, len(keys), per_batch)]


def held_exactly(deltas: torch.Tensor, up: torch.Tensor, down: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Which differences (B, out, n) the factors up (B, out, r) @ down (B, r, n) reproduce to EXACT_TOLERANCE: (B,) bool.

    The energy the kept singular values s (B, r) leave out rules out most modules cheaply; the
    others (within fp32 rounding of the bound) are checked on the residual itself.
    """
    total = torch.linalg.vector_norm(deltas, dim=(1, 2)).square()  # (B,)
    left_out = total - s.square().sum(dim=1)  # (B,), rounding of about 1e-6 * total
    candidates = (left_out <= 1e-5 * total).nonzero().flatten().tolist()
    exact = torch.zeros(deltas.shape[0], dtype=torch.bool, device=deltas.device)
    for index in candidates:
        residual = torch.linalg.matrix_norm(deltas[index] - up[index] @ down[index])
        exact[index] = residual <= EXACT_TOLERANCE * total[index].sqrt()
    return exact


def _factorize(deltas: torch.Tensor, rank: int, settings: ExtractSettings) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Deltas (B, out, n) -> up (B, out, rank), down (B, rank, n), alpha, and how many were held exactly (not clamped)."""
    u, s, vh = truncated_svd(deltas, rank)  # (B, out, r), (B, r), (B, r, n)
    u, vh = with_sign_convention(u, vh)
    up, down = u * s[:, None, :], vh  # kohya's split: up = U·S, down = Vh
    exact = held_exactly(deltas, up, down, s)  # (B,)
    clamped_up, clamped_down = clamp_factors(up, down, settings.clamp_mode, settings.clamp_quantile)
    up = torch.where(exact[:, None, None], up, clamped_up)
    down = torch.where(exact[:, None, None], down, clamped_down)
    alpha = float(settings.alpha if settings.alpha is not None else settings.rank)
    return up * (rank / alpha), down, alpha, int(exact.sum())  # the scale alpha / rank is undone in up


def extract_lora(
    base: Mapping[str, torch.Tensor],
    tuned: Mapping[str, torch.Tensor],
    settings: ExtractSettings,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Extraction:
    """LoRA factors for `tuned - base`, per "<component>.<module path>" weight of both models."""
    settings.validate()
    check_same_architecture(base, tuned)
    notes: list[str] = []
    keys = sorted(base)
    if settings.modules == "kohya":
        keys = _kohya_subset(keys, settings.conv_rank is not None, notes)
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
    exact_count = 0
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
                up, down, alpha, exact = _factorize(deltas, rank, settings)
                exact_count += exact
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
    if settings.clamp_quantile < 1.0:
        notes.append(_clamp_note(settings, exact_count, len(keys)))
    return Extraction(lora, notes)


def _clamp_note(settings: ExtractSettings, exact_count: int, total: int) -> str:
    rule = "signed values (kohya's rule)" if settings.clamp_mode == "kohya" else "absolute values"
    note = f"clamp: factors limited to the {settings.clamp_quantile:g} quantile of their {rule} in {total - exact_count} modules"
    if exact_count:
        note += f"; {exact_count} modules the rank holds exactly are not clamped"
    return note


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
