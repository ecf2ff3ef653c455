"""A1111 hypernetwork files; the only code that knows their layout.

`.pt` (A1111's own): integer keys, one per context width, each a (K, V) pair of
state dicts of an `nn.Sequential` named `linear` (`linear.{i}.weight/bias`), beside
the options that shape those MLPs (`layer_structure`, `activation_func`, ...).
`.safetensors` (tunelab's): tensors `{width}.k.linear.{i}.weight` / `{width}.v...`,
the options in the metadata.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from tunelab.errors import TunelabError
from tunelab.formats.safetensors_io import save_tensors, save_torch_tree
from tunelab.safe_load import load_state_dict, load_torch_tree, read_safetensors_metadata

KEY_PARTS = ("k", "v")  # the pair's order in A1111: (K module, V module)
_PARAM_KEY = re.compile(r"^linear\.\d+\.(weight|bias)$")
# Files from before A1111 named its two linears directly.
_OLD_PARAM_NAMES = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
                    "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}
_SAFETENSORS_KEY = re.compile(r"^(\d+)\.([kv])\.(linear\.\d+\.(?:weight|bias))$")

StateDict = dict[str, torch.Tensor]


@dataclass
class HypernetworkStructure:
    """What shapes each MLP, by A1111's names and defaults for files that lack a key."""

    layer_structure: list[float] = field(default_factory=lambda: [1.0, 2.0, 1.0])
    activation_func: str = "linear"
    is_layer_norm: bool = False
    weight_initialization: str = "Normal"
    use_dropout: bool = False
    last_layer_dropout: bool = False
    dropout_structure: list[float] | None = None
    activate_output: bool = True  # A1111's default when a file does not say (older files)

    def dropouts(self) -> list[float]:
        """Dropout probability after each layer (A1111's parse_dropout_structure)."""
        if self.dropout_structure is not None:
            return list(self.dropout_structure)
        count = len(self.layer_structure)
        if not self.use_dropout:
            return [0.0] * count
        return [0.0] + [0.3] * (count - 3) + [0.3 if self.last_layer_dropout else 0.0] + [0.0]


@dataclass
class HypernetworkFile:
    structure: HypernetworkStructure
    modules: dict[int, tuple[StateDict, StateDict]]  # context width -> (K, V) MLP state dicts
    name: str | None = None
    step: int | None = None


def read_hypernetwork(path: str | Path) -> HypernetworkFile:
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    tree = load_torch_tree(path)
    if not isinstance(tree, dict):
        raise TunelabError(f"{path.name}: not a hypernetwork file (it holds a {type(tree).__name__})")
    structure = _structure_from({key: value for key, value in tree.items() if isinstance(key, str)}, path)
    modules = {}
    for width, pair in tree.items():
        if isinstance(width, int) and not isinstance(width, bool):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(sd, dict) for sd in pair)):
                raise TunelabError(f"{path.name}: entry {width} must be a (K, V) pair of state dicts")
            modules[width] = tuple(_checked_state_dict(sd, path, width) for sd in pair)
    return _complete(HypernetworkFile(structure, modules, _str_or_none(tree.get("name")), _int_or_none(tree.get("step"))), path)


def _read_safetensors(path: Path) -> HypernetworkFile:
    metadata = read_safetensors_metadata(path)
    options = {}
    for option in fields(HypernetworkStructure):
        if option.name in metadata:
            text = metadata[option.name]
            options[option.name] = text if option.type == "str" else _json(text, option.name, path)
    pairs: dict[int, tuple[StateDict, StateDict]] = {}
    for key, tensor in load_state_dict(path).items():
        match = _SAFETENSORS_KEY.match(key)
        if match is None:
            raise TunelabError(f"{path.name}: unexpected tensor {key!r} (expected <width>.k|v.linear.<i>.weight|bias)")
        width, part, name = int(match.group(1)), match.group(2), match.group(3)
        pairs.setdefault(width, ({}, {}))[KEY_PARTS.index(part)][name] = tensor
    step = metadata.get("step", "")
    hypernetwork = HypernetworkFile(
        _structure_from(options, path), pairs, metadata.get("name"), int(step) if step.isdigit() else None
    )
    return _complete(hypernetwork, path)


def _structure_from(options: dict, path: Path) -> HypernetworkStructure:
    structure = HypernetworkStructure()
    for option in fields(HypernetworkStructure):
        value = options.get(option.name)
        if value is None:  # absent, or None as A1111 writes for "no activation"
            continue
        expected = {"str": str, "bool": bool}.get(option.type)
        if expected is not None and not isinstance(value, expected):
            raise TunelabError(f"{path.name}: {option.name} must be {option.type}, got {value!r}")
        setattr(structure, option.name, value)
    layers = structure.layer_structure
    if not (isinstance(layers, (list, tuple)) and len(layers) >= 2 and layers[0] == 1 and layers[-1] == 1):
        raise TunelabError(f"{path.name}: layer_structure must start and end with 1, got {layers}")
    structure.layer_structure = [float(size) for size in layers]
    if len(structure.dropouts()) != len(layers):
        raise TunelabError(f"{path.name}: dropout_structure must have one entry per layer_structure entry")
    return structure


def _checked_state_dict(state: dict, path: Path, width: int) -> StateDict:
    state = {_OLD_PARAM_NAMES.get(key, key): value for key, value in state.items()}
    for key, value in state.items():
        if not (isinstance(key, str) and _PARAM_KEY.match(key) and isinstance(value, torch.Tensor)):
            raise TunelabError(f"{path.name}: module for width {width} has an unexpected entry {key!r}")
    return state


def _complete(hypernetwork: HypernetworkFile, path: Path) -> HypernetworkFile:
    if not hypernetwork.modules:
        raise TunelabError(f"{path.name}: not a hypernetwork file (no per-width modules)")
    for width, (k_state, v_state) in hypernetwork.modules.items():
        if not k_state or not v_state:
            raise TunelabError(f"{path.name}: module pair for width {width} is incomplete")
        for key, tensor in (*k_state.items(), *v_state.items()):
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise TunelabError(f"{path.name}: {key} of the module for width {width} holds NaN or infinite values")
    return hypernetwork


def write_hypernetwork_pt(hypernetwork: HypernetworkFile, path: Path) -> Path:
    structure = hypernetwork.structure
    tree: dict = {width: (dict(k), dict(v)) for width, (k, v) in hypernetwork.modules.items()}
    tree |= {
        "step": hypernetwork.step or 0,
        "name": hypernetwork.name,
        "layer_structure": list(structure.layer_structure),
        "activation_func": structure.activation_func,
        "is_layer_norm": structure.is_layer_norm,
        "weight_initialization": structure.weight_initialization,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
        "activate_output": structure.activate_output,
        "use_dropout": structure.use_dropout,
        "dropout_structure": structure.dropouts(),
        "last_layer_dropout": structure.last_layer_dropout,
        "optional_info": None,
    }
    return save_torch_tree(tree, path)


def write_hypernetwork_safetensors(hypernetwork: HypernetworkFile, path: Path, metadata: dict[str, str]) -> Path:
    tensors = {
        f"{width}.{part}.{name}": tensor
        for width, pair in hypernetwork.modules.items()
        for part, state in zip(KEY_PARTS, pair)
        for name, tensor in state.items()
    }
    header = dict(metadata)
    structure = hypernetwork.structure
    for option in fields(HypernetworkStructure):
        value = getattr(structure, option.name) if option.name != "dropout_structure" else structure.dropouts()
        header[option.name] = value if isinstance(value, str) else json.dumps(value)
    if hypernetwork.name is not None:
        header["name"] = hypernetwork.name
    header["step"] = str(hypernetwork.step or 0)
    return save_tensors(tensors, path, header)


def _json(text: str, key: str, path: Path):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise TunelabError(f"{path.name}: metadata {key!r} is not valid JSON: {text[:60]!r}") from None


def _str_or_none(value) -> str | None:
    return value if isinstance(value, str) else None


def _int_or_none(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
