"""Everything a resumed run needs to be the run it would have been.

Saved per checkpoint: the optimised parameters (safetensors), and in `state.pt`
(tensors and plain Python values only, read back with weights_only=True) the
optimizer, LR scheduler and grad-scaler states, the torch/CUDA/Python random states, the
technique's own extra state (e.g. EMA) and the data position.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tunelab.errors import TunelabError
from tunelab.formats.safetensors_io import save_tensors
from tunelab.safe_load import load_state_dict, load_torch_tree

PARAMS_FILE = "params.safetensors"
STATE_FILE = "state.pt"


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches consumed in the current epoch (the order is (seed, epoch)'s)
    nonfinite_in_a_row: int = 0
    skipped_steps: int = 0


def _parameters(optimizer) -> dict[str, torch.nn.Parameter]:
    """The optimised parameters, named by their place in the optimizer (stable across identical runs)."""
    return {
        f"{group_index}.{param_index}": param
        for group_index, group in enumerate(optimizer.param_groups)
        for param_index, param in enumerate(group["params"])
    }


STATE_KEYS = {"optimizer", "lr_scheduler", "scaler", "torch_rng", "cuda_rng", "python_rng", "progress", "method"}


def save_training_state(folder: Path, optimizer, lr_scheduler, scaler, progress: Progress, method, average=None) -> None:
    save_tensors({name: p.detach() for name, p in _parameters(optimizer).items()}, folder / PARAMS_FILE)
    state = {
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python_rng": random.getstate(),
        "progress": asdict(progress),
        "method": method.state_dict(),
        "ema": average.state_dict() if average is not None else None,
    }
    torch.save(state, folder / STATE_FILE)


def load_training_state(folder: Path, optimizer, lr_scheduler, scaler, method, average=None) -> Progress:
    params = _parameters(optimizer)
    saved = load_state_dict(folder / PARAMS_FILE)
    if set(saved) != set(params) or any(saved[n].shape != p.shape for n, p in params.items()):
        raise TunelabError(f"checkpoint {folder} does not match this run's trainable parameters (another technique or model?)")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name])
    state = load_torch_tree(folder / STATE_FILE)  # weights_only, one line when damaged or unsafe
    if not isinstance(state, dict) or not STATE_KEYS <= set(state):
        raise TunelabError(f"checkpoint {folder}: {STATE_FILE} is not a tunelab training state")
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(_as_tuples(state["python_rng"]))
    if state["method"] is not None:  # checkpoints of techniques that had no state of their own hold None
        method.load_state_dict(state["method"])
    if average is not None:
        if state.get("ema") is None:
            raise TunelabError(f"checkpoint {folder} was made without --ema; resume it without --ema, or start a new run")
        average.load_state_dict(state["ema"])
    return Progress(**state["progress"])


def _as_tuples(value):
    # random.setstate wants tuples all the way down.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
