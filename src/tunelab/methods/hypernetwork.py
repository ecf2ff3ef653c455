"""Hypernetworks (A1111): small MLPs that transform the attention context before `to_k` and `to_v`.

For every attention of the denoiser, self- and cross-attention alike, with context
`c` (the text embedding for cross-attention, the hidden states for self-attention)
of a width the hypernetwork has modules for:

    key input   = c + MLP_k(c) * strength
    value input = c + MLP_v(c) * strength

They are installed as forward pre-hooks on `to_k`/`to_v`, whatever attention
processor runs the layer; removing the hooks gives back the base model exactly.
Several hypernetworks compose in the order attached, as in A1111.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from tunelab.config import option
from tunelab.errors import TunelabError
from tunelab.formats.hypernetwork import (
    HypernetworkFile,
    HypernetworkStructure,
    read_hypernetwork,
    write_hypernetwork_pt,
    write_hypernetwork_safetensors,
)
from tunelab.methods.base import GenerateFlag, Method
from tunelab.models.family import family_for

logger = logging.getLogger(__name__)

# A1111's names; note its "swish" is Hardswish.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
# Files from A1111 may also name any torch activation by its lower-cased class name.
_FILE_ACTIVATIONS = {
    name.lower(): cls
    for name, cls in vars(nn.modules.activation).items()
    if isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == nn.modules.activation.__name__
} | ACTIVATIONS
WEIGHT_INITIALIZERS = {
    "Normal": lambda weight, _: nn.init.normal_(weight, mean=0.0, std=0.01),
    "XavierUniform": lambda weight, _: nn.init.xavier_uniform_(weight),
    "XavierNormal": lambda weight, _: nn.init.xavier_normal_(weight),
    "KaimingUniform": lambda weight, nonlinearity: nn.init.kaiming_uniform_(weight, nonlinearity=nonlinearity),
    "KaimingNormal": lambda weight, nonlinearity: nn.init.kaiming_normal_(weight, nonlinearity=nonlinearity),
}
Activation = Literal["linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid"]
WeightInit = Literal["Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal"]




@dataclass
class HypernetworkOptions:
    layer_structure: list[float] = option(
        "layer widths relative to the context width, first and last 1 (A1111: 1 2 1)", default_factory=lambda: [1.0, 2.0, 1.0]
    )
    activation: Activation = option("activation after each hidden layer", default="linear")
    layer_norm: bool = option("layer normalization after each layer", default=False)
    use_dropout: bool = option("dropout (0.3) after hidden layers while training", default=False)
    last_layer_dropout: bool = option("with --use-dropout, also after the last hidden layer", default=False)
    weight_init: WeightInit = option("weight initialization", default="Normal")
    activate_output: bool = option("apply the activation after the last layer too", default=False)
    context_widths: list[int] = option(
        "context widths to make modules for (default: every attention's: the text width and the denoiser's widths)",
        default_factory=list,
    )
    name: str = option("name stored in the file", default="hypernetwork")


class HypernetworkMLP(nn.Module):
    """A1111's HypernetworkModule without the residual: `linear` is built layer for layer as A1111 does,
    so its state dict keys (`linear.{i}.weight`) are those of A1111's files."""

    def __init__(self, width: int, structure: HypernetworkStructure):
        super().__init__()
        sizes = structure.layer_structure
        dropouts = structure.dropouts()
        activation = _FILE_ACTIVATIONS.get(structure.activation_func)
        if activation is None:
            raise TunelabError(f"unsupported hypernetwork activation {structure.activation_func!r}")
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(int(width * sizes[i]), int(width * sizes[i + 1])))
            is_last = i == len(sizes) - 2
            if structure.activation_func != "linear" and not (is_last and not structure.activate_output):
                layers.append(activation())
            if structure.is_layer_norm:
                layers.append(nn.LayerNorm(int(width * sizes[i + 1])))
            if dropouts[i + 1] > 0:
                layers.append(nn.Dropout(p=dropouts[i + 1]))
        self.linear = nn.Sequential(*layers)

    def initialize(self, weight_init: str, activation: str) -> None:
        """A1111's initialization; biases start at zero, LayerNorm weights too get N(0, 0.01) there."""
        nonlinearity = "leaky_relu" if activation == "leakyrelu" else "relu"
        for layer in self.linear:
            if isinstance(layer, (nn.Linear, nn.LayerNorm)):
                initializer = WEIGHT_INITIALIZERS["Normal" if isinstance(layer, nn.LayerNorm) else weight_init]
                initializer(layer.weight.data, nonlinearity)
                nn.init.zeros_(layer.bias.data)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.linear(context)  # (B, T, width)


class Hypernetwork(nn.Module):
    """A (K, V) pair of MLPs per context width."""

    def __init__(self, widths: list[int], structure: HypernetworkStructure):
        super().__init__()
        self.structure = structure
        self.k = nn.ModuleDict({str(width): HypernetworkMLP(width, structure) for width in widths})
        self.v = nn.ModuleDict({str(width): HypernetworkMLP(width, structure) for width in widths})

    @property
    def widths(self) -> list[int]:
        return [int(width) for width in self.k]

    @classmethod
    def from_file(cls, hypernetwork_file: HypernetworkFile, path: Path) -> Hypernetwork:
        model = cls(sorted(hypernetwork_file.modules), hypernetwork_file.structure)
        for width, (k_state, v_state) in hypernetwork_file.modules.items():
            for modules, state in ((model.k, k_state), (model.v, v_state)):
                try:
                    modules[str(width)].load_state_dict(state)
                except RuntimeError as error:
                    raise TunelabError(
                        f"{path.name}: the module for width {width} does not match its layer_structure "
                        f"{hypernetwork_file.structure.layer_structure}, activation and layer norm "
                        f"({' '.join(str(error).split())[:160]})"
                    ) from None
        return model

    def to_file(self, name: str | None, step: int | None) -> HypernetworkFile:
        def state(module: nn.Module) -> dict[str, torch.Tensor]:
            return {key: value.detach().float().cpu() for key, value in module.state_dict().items()}

        modules = {width: (state(self.k[str(width)]), state(self.v[str(width)])) for width in self.widths}
        return HypernetworkFile(self.structure, modules, name, step)


def attention_layers(denoiser: nn.Module) -> list[nn.Module]:
    """Every attention of the denoiser: modules with `to_k` and `to_v` projections."""
    return [m for m in denoiser.modules() if isinstance(getattr(m, "to_k", None), nn.Module) and hasattr(m, "to_v")]


def context_widths(denoiser: nn.Module) -> set[int]:
    return {layer.to_k.in_features for layer in attention_layers(denoiser)}


class HypernetworkHooks:
    """The installed hooks of one hypernetwork; `remove()` detaches it."""

    def __init__(self, handles: list):
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def attach_hypernetwork(denoiser: nn.Module, hypernetwork: Hypernetwork, strength: float = 1.0) -> HypernetworkHooks:
    handles = []
    for layer in attention_layers(denoiser):
        width = str(layer.to_k.in_features)
        if width in hypernetwork.k:
            handles.append(layer.to_k.register_forward_pre_hook(_shift_context(hypernetwork.k[width], strength)))
            handles.append(layer.to_v.register_forward_pre_hook(_shift_context(hypernetwork.v[width], strength)))
    return HypernetworkHooks(handles)


def _shift_context(mlp: HypernetworkMLP, strength: float):
    def hook(_projection, args):
        context, *rest = args  # (B, T, width)
        # The MLP runs in fp32 whatever the denoiser's dtype, as in A1111.
        shifted = context.float() + mlp(context.float()) * strength
        return (shifted.to(context.dtype), *rest)

    return hook


def _structure_from_options(options: HypernetworkOptions) -> HypernetworkStructure:
    return HypernetworkStructure(
        layer_structure=[float(size) for size in options.layer_structure],
        activation_func=options.activation,
        is_layer_norm=options.layer_norm,
        weight_initialization=options.weight_init,
        use_dropout=options.use_dropout,
        last_layer_dropout=options.last_layer_dropout,
        activate_output=options.activate_output,
    )


class HypernetworkMethod(Method):
    name: ClassVar[str] = "hypernetwork"
    title: ClassVar[str] = "Hypernetwork"
    default_learning_rate: ClassVar[float] = 1e-5  # A1111's default
    options_schema: ClassVar[type] = HypernetworkOptions
    artifact_name: ClassVar[str] = "hypernetwork.safetensors"
    pt_artifact_name: ClassVar[str] = "hypernetwork.pt"
    # A1111's hypernetworks are defined for UNet attention contexts.
    families: ClassVar[frozenset[str]] = frozenset({"sd", "sdxl"})
    generate_flag: ClassVar[GenerateFlag] = GenerateFlag(
        "hypernetwork", "hypernetwork file with optional strength, FILE[:STRENGTH]; repeatable", "hypernetworks", tag="hypernet"
    )

    def __init__(self, options: HypernetworkOptions):
        sizes = options.layer_structure
        if len(sizes) < 2 or sizes[0] != 1 or sizes[-1] != 1 or any(size <= 0 for size in sizes):
            raise TunelabError(f"--layer-structure must start and end with 1 and be positive, got {sizes}")
        super().__init__(options)
        self.structure = _structure_from_options(options)
        self.hypernetwork: Hypernetwork | None = None
        self.hooks: HypernetworkHooks | None = None
        self.step = 0

    def setup(self, family) -> None:
        self.family = family
        denoiser = family.module(family.denoiser_name)
        available = context_widths(denoiser)
        widths = self.options.context_widths or sorted(available)
        unknown = sorted(set(widths) - available)
        if unknown:
            raise TunelabError(
                f"--context-widths {', '.join(map(str, unknown))}: no attention of this model has that context width "
                f"(it has {', '.join(map(str, sorted(available)))})"
            )
        self.hypernetwork = Hypernetwork(sorted(set(widths)), self.structure)
        for mlp in [*self.hypernetwork.k.values(), *self.hypernetwork.v.values()]:
            mlp.initialize(self.structure.weight_initialization, self.structure.activation_func)
        device = next(denoiser.parameters()).device
        self.hypernetwork.to(device)  # fp32, whatever the frozen model's dtype
        self.hooks = attach_hypernetwork(denoiser, self.hypernetwork, strength=1.0)  # A1111 trains at strength 1
        self._modules = {"hypernetwork": self.hypernetwork}

    def trainable_parameters(self) -> list[dict]:
        return [{"params": list(self.hypernetwork.parameters()), "name": "hypernetwork"}]

    def after_step(self, step: int) -> None:
        self.step = step

    def save(self, out_dir: Path, metadata: dict[str, str]) -> Path:
        hypernetwork_file = self.hypernetwork.to_file(self.options.name, self.step)
        write_hypernetwork_pt(hypernetwork_file, Path(out_dir) / self.pt_artifact_name)
        return write_hypernetwork_safetensors(hypernetwork_file, Path(out_dir) / self.artifact_name, metadata)

    # --- generation
    @classmethod
    def attach(cls, pipeline, specs, adapters_dir=None):
        return specs, attach_hypernetworks(pipeline, specs)

    @classmethod
    def detach(cls, pipeline, handle) -> None:
        for hooks in handle:
            hooks.remove()

    @classmethod
    def a1111_fields(cls, entries):
        fields = {}
        for index, (path, strength) in enumerate(entries):
            suffix = f" {index}" if index else ""  # A1111's own fields name one hypernetwork
            fields[f"Hypernet{suffix}"] = Path(path).stem
            fields[f"Hypernet strength{suffix}"] = strength
        return fields


def load_hypernetwork(path: Path, denoiser: nn.Module) -> Hypernetwork:
    """Read a file and check that it fits the denoiser's attention widths."""
    if not path.is_file():
        raise TunelabError(f"hypernetwork file not found: {path}")
    hypernetwork = Hypernetwork.from_file(read_hypernetwork(path), path)
    available = context_widths(denoiser)
    used = [width for width in hypernetwork.widths if width in available]
    if not used:
        raise TunelabError(
            f"{path.name} has modules for context widths {', '.join(map(str, hypernetwork.widths))}, but this model's "
            f"attention contexts are {', '.join(map(str, sorted(available)))} (a hypernetwork for another base model)"
        )
    unused = sorted(set(hypernetwork.widths) - available)
    if unused:
        logger.warning("%s: modules for widths %s match no attention of this model; unused", path.name, unused)
    return hypernetwork


def attach_hypernetworks(pipeline, specs: list[tuple[Path, float]]) -> list[HypernetworkHooks]:
    """Load hypernetwork files onto the pipeline's denoiser with their strengths, in order."""
    if not specs:
        return []
    family = family_for(pipeline)
    denoiser = family.module(family.denoiser_name)
    device = next(denoiser.parameters()).device
    hooks = []
    for path, strength in specs:
        hypernetwork = load_hypernetwork(path, denoiser).to(device).eval()
        hooks.append(attach_hypernetwork(denoiser, hypernetwork, strength))
    return hooks
