"""The search space of a sweep: which training options vary, over which values, and each trial's name.

A value may name another option of the same trial, as `rank`, `rank/2` or `rank*2` (alpha relative to rank).
A list is a set of choices (the grid's axis, or Optuna's categorical choice); a mapping {low, high, log, step}
is a range, which only an Optuna search can sample.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from tunelab.errors import TunelabError

RELATIVE = re.compile(r"^\s*([a-z_]+)\s*(?:([*/])\s*([0-9]+(?:\.[0-9]+)?))?\s*$")


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @property
    def integer(self) -> bool:
        return all(isinstance(value, int) for value in (self.low, self.high)) and (self.step is None or isinstance(self.step, int))


Axis = list[Any] | Range


def parse_space(space: Any, where: str) -> dict[str, Axis]:
    if not isinstance(space, dict) or not space:
        raise TunelabError(f"{where}: 'space' must map training options to a list of values or a range {{low, high}}")
    axes: dict[str, Axis] = {}
    for key, values in space.items():
        key = str(key).replace("-", "_")
        if isinstance(values, list) and values:
            axes[key] = values
        elif isinstance(values, dict) and {"low", "high"} <= set(values) and set(values) <= {"low", "high", "log", "step"}:
            axes[key] = Range(values["low"], values["high"], bool(values.get("log", False)), values.get("step"))
            if not axes[key].low < axes[key].high:
                raise TunelabError(f"{where}: space {key!r}: low must be below high")
        else:
            raise TunelabError(f"{where}: space {key!r} must be a non-empty list of values or {{low, high, log, step}}")
    return axes


def resolve_relative(params: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """Values that name another option of the trial ('rank/2') replaced by numbers."""
    known = {**fixed, **params}
    resolved = {}
    for key, value in params.items():
        match = RELATIVE.match(value) if isinstance(value, str) else None
        if match and match.group(1) in known and match.group(1) != key and isinstance(known[match.group(1)], (int, float)):
            base, operator, number = known[match.group(1)], match.group(2), float(match.group(3) or 1)
            value = base / number if operator == "/" else base * number
        resolved[key] = value
    return resolved


def grid(axes: dict[str, Axis], where: str) -> list[dict[str, Any]]:
    """Every combination of the axes' values, in the order written (the first axis varies slowest)."""
    ranged = [key for key, axis in axes.items() if isinstance(axis, Range)]
    if ranged:
        raise TunelabError(f"{where}: space {ranged[0]!r} is a range; a grid needs a list of values (or search: optuna)")
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[key] for key in keys))]


def _label(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]", "_", text)


def trial_name(technique: str, params: dict[str, Any]) -> str:
    """A folder-safe name that says the trial's settings: lora-rank4-alpha2."""
    return "-".join([technique, *(f"{key}{_label(value)}" for key, value in params.items())])
