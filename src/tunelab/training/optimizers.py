"""The optimizers a run may choose, each from its authors' package, with the settings they recommend.

`--optimizer NAME` picks one; `--optimizer-args key=value ...` passes any of its own constructor
arguments (checked against its signature before any model loads). Each entry's `recommended`
settings are what its authors (and the trainers that ship it) use for diffusion fine-tuning; the
user's arguments win over them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import prodigyopt
import schedulefree
import torch
import yaml
from lion_pytorch import Lion
from transformers.optimization import Adafactor

from tunelab.config import closest
from tunelab.errors import TunelabError


def _bitsandbytes_adamw8bit():
    try:
        import bitsandbytes as bnb  # deferred: optional GPU dependency, imported only when chosen
    except ImportError:
        raise TunelabError("--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
    return bnb.optim.AdamW8bit


def adamw_kernel(options, device: torch.device) -> dict:
    """torch.optim.AdamW's implementation flag: fused (one kernel) on a GPU by default, foreach elsewhere."""
    choice = options.adamw_implementation
    if choice == "auto":
        choice = "fused" if device.type == "cuda" else "foreach"
    return {choice: True}


@dataclass(frozen=True)
class OptimizerChoice:
    name: str
    load: Callable[[], type]  # the optimizer class (a function, so an optional package loads only when chosen)
    recommended: dict[str, Any] = field(default_factory=dict)  # settings for diffusion fine-tuning
    # The rate it runs at without --learning-rate, from the technique's usual rate.
    learning_rate: Callable[[float], float] = lambda technique_rate: technique_rate
    needs_cuda: bool = False
    # Schedule-free optimizers keep two sequences of weights: the one to evaluate and save is only in
    # place after `optimizer.eval()`; they bring their own warm-up and need a constant schedule.
    schedule_free: bool = False
    # Arguments that follow from the run's other options (AdamW's kernels, a schedule-free warm-up).
    run_arguments: Callable[[Any, torch.device], dict[str, Any]] = lambda options, device: {}


OPTIMIZERS = {choice.name: choice for choice in (
    # foreach: a few multi-tensor kernels instead of several per tensor; fused: one kernel for the whole update.
    OptimizerChoice("adamw", lambda: torch.optim.AdamW, run_arguments=adamw_kernel),
    OptimizerChoice("adamw8bit", _bitsandbytes_adamw8bit, needs_cuda=True),
    # Prodigy estimates the step size itself: lr stays 1.0 (its README); bias correction and a safeguarded
    # warm-up are what its authors advise for diffusion models (kohya and OneTrainer ship the same).
    OptimizerChoice("prodigy", lambda: prodigyopt.Prodigy, learning_rate=lambda _: 1.0,
                    recommended={"d_coef": 1.0, "use_bias_correction": True, "safeguard_warmup": True,
                                 "betas": (0.9, 0.99)}),
    # Adafactor with a given learning rate (no relative step, no parameter scaling): the setting kohya
    # documents for fine-tuning on small cards; --optimizer-args relative_step=true ... gives its own schedule.
    OptimizerChoice("adafactor", lambda: Adafactor,
                    recommended={"scale_parameter": False, "relative_step": False, "warmup_init": False}),
    # Lion's authors: a learning rate 3-10x smaller than AdamW's; --learning-rate sets it (default: the technique's / 3).
    OptimizerChoice("lion", lambda: Lion, learning_rate=lambda technique_rate: technique_rate / 3,
                    recommended={"betas": (0.9, 0.99)}),
    OptimizerChoice("adamw_schedulefree", lambda: schedulefree.AdamWScheduleFree, schedule_free=True,
                    run_arguments=lambda options, device: {"warmup_steps": options.lr_warmup_steps}),
)}


def parse_optimizer_args(items: list[str]) -> dict[str, Any]:
    """['d_coef=2', 'betas=[0.9, 0.99]'] -> {'d_coef': 2, 'betas': (0.9, 0.99)}: values read as YAML scalars/lists."""
    parsed = {}
    for item in items:
        key, separator, text = item.partition("=")
        if not separator or not key.strip():
            raise TunelabError(f"--optimizer-args {item!r}: expected KEY=VALUE")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise TunelabError(f"--optimizer-args {item!r}: cannot read the value") from None
        parsed[key.strip()] = tuple(value) if isinstance(value, list) else value
    return parsed


def accepted_arguments(optimizer_class: type) -> list[str]:
    """The constructor's own keyword arguments (what --optimizer-args may set)."""
    parameters = inspect.signature(optimizer_class.__init__).parameters
    return [name for name in parameters if name not in ("self", "params", "lr")]


def check_optimizer_args(name: str, items: list[str]) -> dict[str, Any]:
    """The parsed --optimizer-args, refused with the valid names when one is not the optimizer's."""
    arguments = parse_optimizer_args(items)
    choice = OPTIMIZERS[name]
    valid = accepted_arguments(choice.load())
    for key in arguments:
        if key not in valid:
            raise TunelabError(f"--optimizer-args {key}: not an argument of {name}{closest(key, valid)} "
                               f"(valid: {', '.join(valid)}; the learning rate is --learning-rate)")
    return arguments


def run_learning_rate(options, method) -> float:
    """--learning-rate, else the rate the optimizer runs at for this technique."""
    if options.learning_rate is not None:
        return options.learning_rate
    return OPTIMIZERS[options.optimizer].learning_rate(method.default_learning_rate)


def check_optimizer_options(options) -> None:
    """What can be refused about the optimizer and its schedule before any model loads."""
    if OPTIMIZERS[options.optimizer].needs_cuda and not torch.cuda.is_available():
        raise TunelabError(f"--optimizer {options.optimizer} needs a CUDA GPU; use adamw on this machine")
    check_optimizer_args(options.optimizer, options.optimizer_args)
    if OPTIMIZERS[options.optimizer].schedule_free and options.lr_scheduler != "constant":
        raise TunelabError(f"--optimizer {options.optimizer} needs no schedule (it has its own warm-up, "
                           f"--lr-warmup-steps); leave --lr-scheduler constant")
    if options.lr_cycles < 1:
        raise TunelabError(f"--lr-cycles must be at least 1, got {options.lr_cycles}")
    if not options.lr_power > 0:
        raise TunelabError(f"--lr-power must be positive, got {options.lr_power}")


def make_optimizer(options, groups: list[dict], learning_rate: float, device: torch.device):
    """The run's optimizer over the parameter groups: recommended settings < the run's < --optimizer-args."""
    choice = OPTIMIZERS[options.optimizer]
    if choice.needs_cuda and device.type != "cuda":
        raise TunelabError(f"--optimizer {choice.name} needs a CUDA GPU; use adamw on this machine")
    arguments = {"weight_decay": options.weight_decay, **choice.recommended, **choice.run_arguments(options, device),
                 **check_optimizer_args(choice.name, options.optimizer_args)}
    optimizer = choice.load()(groups, lr=learning_rate, **arguments)
    if choice.schedule_free:
        optimizer.train()  # schedule-free optimizers start in eval mode
    return optimizer
