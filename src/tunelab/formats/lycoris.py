"""LyCORIS files: which of its algorithms read as a LoRA, and which are refused.

LoCon is kohya's layout (`lora_down` / `lora_up` / `alpha`) extended to every conv
layer, so it reads as a LoRA. With `use_tucker` a conv module also has a
`lora_mid` core: down (r, in, 1, 1), mid (r, r, kh, kw), up (out, r, 1, 1), whose
product folds exactly into a plain conv LoRA.

LoHa (Hadamard products), LoKr (Kronecker products), OFT (rotations), DoRA
(weight-decomposed; also PEFT's `lora_magnitude_vector`), full weight differences
and norm adapters are not `up @ down` products: reading them as LoRA would give a
wrong model, so they are refused by name.
"""

from __future__ import annotations

from typing import Iterable

import torch

from tunelab.errors import TunelabError

# Parameter-name part (after the module name) -> the algorithm that writes it.
UNSUPPORTED_PARTS = {
    "hada_w1_a": "LoHa",
    "hada_w1_b": "LoHa",
    "lokr_w1": "LoKr",
    "lokr_w1_a": "LoKr",
    "lokr_w2": "LoKr",
    "lokr_w2_a": "LoKr",
    "oft_blocks": "OFT",
    "oft_diag": "OFT",
    "oft_R": "BOFT",
    "dora_scale": "DoRA",
    "lora_magnitude_vector": "DoRA",
    "diff": "full weight difference (LyCORIS 'full')",
    "w_norm": "norm-layer adapter",
}

TUCKER_CORE = "lora_mid.weight"


def _parts(key: str) -> list[str]:
    return key.split(".")


def unsupported_algorithm(keys: Iterable[str]) -> tuple[str, str] | None:
    """(algorithm name, example key) when a file holds weights of an algorithm that is not a LoRA."""
    for key in keys:
        for part in _parts(key):
            if part in UNSUPPORTED_PARTS:
                return UNSUPPORTED_PARTS[part], key
    return None


def refuse_unsupported(keys: Iterable[str], source: str) -> None:
    found = unsupported_algorithm(keys)
    if found is not None:
        algorithm, key = found
        raise TunelabError(
            f"{source} is a {algorithm} file (key {key}), not a LoRA; tunelab's LoRA tools read LoRA and "
            f"LyCORIS LoCon only, since {algorithm} weights are not low-rank up @ down products and would give a wrong result"
        )


def fold_tucker(down: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
    """A Tucker-decomposed conv LoRA's down and core as one plain conv down: (r, in, kh, kw).

    The weight change is up @ mid @ down per kernel position, so mid @ down is the new down.
    """
    down_2d = down.flatten(1)  # (r, in), down is (r, in, 1, 1)
    return torch.einsum("abhw,bi->aihw", mid.float(), down_2d.float()).to(down.dtype)  # (r, in, kh, kw)
