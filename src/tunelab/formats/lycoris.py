"""LyCORIS's per-module layout: which parts make which algorithm, and the ones tunelab refuses.

A module `<name>` of a kohya/LyCORIS file holds `<name>.<part>` tensors:

    LoRA / LoCon   lora_down.weight, lora_up.weight [, lora_mid.weight (Tucker core)]
    LoHa           hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b [, hada_t1, hada_t2]
    LoKr           lokr_w1 | lokr_w1_a + lokr_w1_b, lokr_w2 | lokr_w2_a + lokr_w2_b [, lokr_t2]
    any of them    alpha, and dora_scale when weight-decomposed (DoRA)

A LoCon Tucker core folds exactly into a plain conv LoRA: down (r, in, 1, 1), mid (r, r, kh, kw),
up (out, r, 1, 1) -> down' = mid @ down (r, in, kh, kw).

OFT/BOFT (rotations), full weight differences, norm adapters and DoRA of the weight difference
(`wd_for_diff`) are refused by name: reading them as anything else would give a wrong model.
"""

from __future__ import annotations

from typing import Iterable

import torch

from tunelab.errors import TunelabError
from tunelab.formats.adapter_modules import DoraModule, LohaModule, LokrModule
from tunelab.formats.lora_set import AdapterModule, LoraModule, algorithm_title

# Parameter-name part (after the module name) -> the algorithm that writes it, for those tunelab refuses.
UNSUPPORTED_PARTS = {
    "oft_blocks": "OFT",
    "oft_diag": "OFT",
    "oft_R": "BOFT",
    "diff": "full weight difference (LyCORIS 'full')",
    "w_norm": "norm-layer adapter",
    "wd_for_diff": "DoRA of the weight difference (LyCORIS wd_for_diff)",
}

TUCKER_CORE = "lora_mid.weight"
LORA_PARTS = ("lora_down.weight", "lora_up.weight", TUCKER_CORE)
ALGORITHM_PARTS = {
    "lora": LORA_PARTS,
    "loha": LohaModule.REQUIRED + LohaModule.OPTIONAL,
    "lokr": LokrModule.OPTIONAL,
}
SHARED_PARTS = ("alpha", "dora_scale")
KNOWN_PARTS = frozenset(part for parts in ALGORITHM_PARTS.values() for part in parts) | set(SHARED_PARTS)


def _parts(key: str) -> list[str]:
    return key.split(".")


def unsupported_algorithm(keys: Iterable[str]) -> tuple[str, str] | None:
    """(algorithm name, example key) when a file holds weights of an algorithm tunelab does not read."""
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
            f"{source} is a {algorithm} file (key {key}); tunelab reads LoRA, LoCon, LoHa, LoKr and DoRA only, "
            f"and reading {algorithm} weights as one of those would give a wrong result"
        )


def is_module_part(part: str) -> bool:
    return part in KNOWN_PARTS


def fold_tucker(down: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
    """A Tucker-decomposed conv LoRA's down and core as one plain conv down: (r, in, kh, kw).

    The weight change is up @ mid @ down per kernel position, so mid @ down is the new down.
    """
    down_2d = down.flatten(1)  # (r, in), down is (r, in, 1, 1)
    return torch.einsum("abhw,bi->aihw", mid.float(), down_2d.float()).to(down.dtype)  # (r, in, kh, kw)


def _algorithm_of(name: str, parts: dict[str, torch.Tensor]) -> str:
    found = {algorithm: [part for part in parts if part in names] for algorithm, names in ALGORITHM_PARTS.items()}
    found = {algorithm: names for algorithm, names in found.items() if names}
    if len(found) > 1:
        shown = " and ".join(f"{algorithm_title(algorithm)} ({names[0]})" for algorithm, names in found.items())
        raise TunelabError(f"module {name} mixes {shown} weights; a module holds one algorithm, refusing to guess")
    if not found:
        raise TunelabError(f"module {name} has only {', '.join(sorted(parts))}; the file is incomplete")
    return next(iter(found))


def _require(name: str, parts: dict[str, torch.Tensor], *required: str) -> None:
    missing = [part for part in required if part not in parts]
    if missing:
        raise TunelabError(f"module {name} lacks {', '.join(missing)}; the file is incomplete")


def module_from_parts(name: str, parts: dict[str, torch.Tensor], default_alpha: float | None = None,
                      layout: str = "kohya") -> AdapterModule:
    """One module from its parts (`lora_down.weight`, `hada_w1_a`, `alpha`, `dora_scale`, ...).

    Without an `alpha` part, alpha is `default_alpha`, else the rank (no scaling), as LyCORIS and kohya read it.
    """
    unknown = sorted(part for part in parts if part not in KNOWN_PARTS)
    if unknown:
        raise TunelabError(f"unrecognised keys in this {layout} LoRA file ({name}.{unknown[0]}); refusing to guess what they do")
    algorithm = _algorithm_of(name, parts)
    alpha_tensor = parts.get("alpha")
    if alpha_tensor is not None and alpha_tensor.numel() != 1:
        raise TunelabError(f"module {name}: alpha holds {alpha_tensor.numel()} values, not one number")
    alpha = float(alpha_tensor.item()) if alpha_tensor is not None else default_alpha
    if algorithm == "lora":
        _require(name, parts, "lora_down.weight", "lora_up.weight")
        down = parts["lora_down.weight"]
        if TUCKER_CORE in parts:
            down = fold_tucker(down, parts[TUCKER_CORE])
        if down.shape[0] == 0:
            raise TunelabError(f"module {name} has rank 0 (an empty lora_down): it holds no change")
        module = LoraModule(down, parts["lora_up.weight"], alpha if alpha is not None else float(down.shape[0]))
    elif algorithm == "loha":
        _require(name, parts, *LohaModule.REQUIRED)
        if ("hada_t1" in parts) != ("hada_t2" in parts):
            raise TunelabError(f"module {name} has one LoHa Tucker core of two; the file is incomplete")
        held = {part: parts[part] for part in ALGORITHM_PARTS["loha"] if part in parts}
        module = LohaModule(held, alpha if alpha is not None else float(parts["hada_w1_b"].shape[0]))
    else:
        for factor in ("w1", "w2"):
            if f"lokr_{factor}" not in parts:
                _require(name, parts, f"lokr_{factor}_a", f"lokr_{factor}_b")
        held = {part: parts[part] for part in ALGORITHM_PARTS["lokr"] if part in parts}
        module = LokrModule(held, 0.0)
        module.alpha = alpha if alpha is not None else float(module.rank or 1)
    _check_inner_shapes(name, module)
    if "dora_scale" in parts:
        module = DoraModule(module, parts["dora_scale"])
        out, columns = module.delta_shape[0], module.delta_shape[1]
        if module.dora_scale.numel() not in (out, columns) or (not module.on_output_axis and module.dora_scale.shape[1] != columns):
            raise TunelabError(f"module {name}: dora_scale {tuple(module.dora_scale.shape)} fits neither its output nor its input axis")
    return module


def _check_inner_shapes(name: str, module) -> None:
    """Factors that cannot multiply are a broken file, said here rather than as a matrix error later
    (checked on the meta device: shapes only, no arithmetic)."""
    if isinstance(module, LoraModule):
        shadow = LoraModule(module.down.to("meta"), module.up.to("meta"), module.alpha)
    else:
        shadow = type(module)({part: tensor.to("meta") for part, tensor in module.parts.items()}, module.alpha)
    try:
        shadow.flat_delta()
    except RuntimeError as error:
        raise TunelabError(f"module {name}: its {algorithm_title(module.algorithm)} factors do not fit together ({str(error).splitlines()[0]})") from None


def module_to_parts(module: AdapterModule) -> dict[str, torch.Tensor]:
    """The tensors of one module under LyCORIS's part names, alpha included."""
    inner = module.inner if isinstance(module, DoraModule) else module
    if isinstance(inner, LoraModule):
        parts = {"lora_down.weight": inner.down, "lora_up.weight": inner.up}
    else:
        parts = dict(inner.parts)
    dtype = next(iter(parts.values())).dtype
    parts["alpha"] = torch.tensor(float(inner.alpha), dtype=dtype)
    if isinstance(module, DoraModule):
        parts["dora_scale"] = module.dora_scale
    return parts
