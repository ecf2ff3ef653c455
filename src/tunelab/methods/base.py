"""The contract every technique keeps: training, saving, and using its artifact in generation.

Everything that differs between techniques lives on its `Method` class; the trainer, generation,
the comparison bench and `bench speed` only call what is declared here. `Method` gives the
defaults most techniques share (train whole modules, captions as they are, no extra state); a
technique overrides what it does differently.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from tunelab.config import option, parse_weighted_path
from tunelab.data.folder import ImageItem
from tunelab.errors import TunelabError


@dataclass(frozen=True)
class GenerateFlag:
    """How `tunelab generate` asks for a technique's artifacts: a repeatable flag, maybe an A1111 prompt tag."""

    field: str  # GenerateOptions field, and the flag: "lora" -> --lora FILE[:WEIGHT]
    help: str
    record_key: str  # where the PNG record lists what was attached: "loras"
    tag: str | None = None  # A1111 extra-network tag kind: <lora:NAME:WEIGHT>
    tag_aliases: tuple[str, ...] = ()  # other kinds A1111 reads as this one: <lyco:NAME:WEIGHT>


def parameter_groups(modules: dict[str, torch.nn.Module], text_encoder_names, text_encoder_lr: float | None) -> list[dict]:
    """One optimizer group per trained component; text encoders may have their own learning rate."""
    groups = []
    for name, module in modules.items():
        group = {"params": [p for p in module.parameters() if p.requires_grad], "name": name}
        if name in text_encoder_names and text_encoder_lr is not None:
            group["lr"] = text_encoder_lr
        groups.append(group)
    return groups


def group_parameter_count(groups: list[dict]) -> int:
    """Elements of the trainable parameters in optimizer groups."""
    return sum(p.numel() for group in groups for p in group["params"] if p.requires_grad)


class Method(ABC):
    # --- what the technique is
    name: ClassVar[str]  # registry key and `tunelab train NAME`
    title: ClassVar[str]  # for people: "Textual Inversion"
    options_schema: ClassVar[type]  # dataclass of the technique's own options
    default_learning_rate: ClassVar[float]  # used when --learning-rate is not given
    families: ClassVar[frozenset[str]]  # model families it makes sense on; others are refused before loading
    artifact_name: ClassVar[str]  # what `save` writes in the output folder
    # --- how its artifact is used when generating (None: no flag of its own: the artifact is a whole model, passed as
    # --model, or a file another technique's flag loads, as a predicted LoRA is loaded with --lora)
    generate_flag: ClassVar[GenerateFlag | None] = None
    # The reference training step `bench speed` times it against ("lora" or "full"; None: no reference)
    reference_mode: ClassVar[str | None] = None
    # Options a run needs when the user gives none (its required ones); the bench and the tests use them.
    example_options: ClassVar[dict[str, Any]] = {}
    # The fewest optimizer steps a run may ask for (0: the technique's artifact is made before training, as a
    # predicted LoRA is, and the steps refine it).
    min_steps: ClassVar[int] = 1

    def __init__(self, options: Any) -> None:
        self.options = options
        self.family = None
        self._modules: dict[str, torch.nn.Module] = {}

    # --- training
    @property
    def default_prompt(self) -> str | None:
        """Caption for uncaptioned images when --prompt is not given."""
        return None

    @property
    def text_encoder_lr(self) -> float | None:
        """A separate learning rate for trained text encoders (None: the run's)."""
        return None

    def see_training_images(self, items: list[ImageItem]) -> None:
        """Before `setup`: the images (and captions) the run trains on, less any held out for validation. Most
        techniques learn from them only through the steps; one that starts from them (a weight predictor) keeps them."""

    @abstractmethod
    def setup(self, family) -> None:
        """Freeze the base, inject layers or add tokens; set `self._modules` to what trains."""

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return dict(self._modules)

    def trainable_parameters(self) -> list[dict]:
        """Optimizer parameter groups."""
        return parameter_groups(self._modules, self.family.text_encoder_names, self.text_encoder_lr)

    def learned_parameter_count(self) -> int:
        """What the technique learns (Textual Inversion: its new rows, not the whole table)."""
        return group_parameter_count(self.trainable_parameters())

    def training_captions(self, captions: list[str]) -> list[str]:
        return captions

    def after_step(self, step: int) -> None:
        """After each optimizer step: e.g. restore frozen rows, freeze a text encoder at its stop step."""

    def state_dict(self) -> dict:
        """What a resumed run needs beyond the optimizer's parameters (plain values and tensors)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @abstractmethod
    def save(self, out_dir: Path, metadata: dict[str, str]) -> Path:
        """Write the artifact (via formats/) and return its path."""

    # --- generation
    @classmethod
    def prompt_identifier(cls, training: dict[str, Any]) -> str | None:
        """The word a run with these options must name its subject with in prompts, where the technique fixes it
        (Textual Inversion: its token); None: the subject's own identifier ("sks")."""
        return None

    @classmethod
    def generate_options(cls, artifact: Path, identifier: str | None) -> dict:
        """`tunelab generate` options that load this artifact on its base model (the comparison bench uses them)."""
        return {cls.generate_flag.field: [str(artifact)]}

    @classmethod
    def composition_refusal(cls, training: dict) -> str | None:
        """Why an artifact trained with these options cannot be stacked with another by `lora/combining` (the
        comparison's composition study); None when it can. Only plain LoRA files can."""
        return f"{cls.title} artifacts are not LoRA files"

    @classmethod
    def parse_spec(cls, spec: str) -> tuple[Path, Any]:
        """One value of the generate flag -> (file, its weight, strength or token)."""
        return parse_weighted_path(spec)

    @classmethod
    def generate_fields(cls) -> list[tuple[str, Any, dataclasses.Field]]:
        """GenerateOptions fields this technique adds: its flag (and any option of its own)."""
        flag = cls.generate_flag
        return [(flag.field, list[str], option(flag.help, repeat=True, default_factory=list))]

    @classmethod
    def grid_parameters(cls) -> dict[str, type]:
        """Per-image options of this technique an X/Y grid may sweep (name -> type)."""
        return {}

    @classmethod
    def tag_weight(cls, multipliers: list[str], named: dict[str, str]) -> Any:
        """What a prompt tag asks for, from the arguments after its name (A1111: one multiplier, default 1);
        ValueError where one is not a number."""
        return float(multipliers[0]) if multipliers else 1.0

    @classmethod
    def requested(cls, options, tagged: list[tuple[Path, float]], adapters_dir: Path | None) -> list[tuple[Path, Any]]:
        """What a generate run asks for: flag values, then prompt tags."""
        return [cls.parse_spec(spec) for spec in getattr(options, cls.generate_flag.field)] + tagged

    @classmethod
    def attach(cls, pipeline, specs: list[tuple[Path, Any]], adapters_dir: Path | None = None) -> tuple[list, Any]:
        """Load the files (and any found for it in the adapters folder) onto the pipeline:
        (the entries as loaded, a handle for `detach`). Every technique with a `generate_flag` defines it; one
        without (DreamBooth: its artifact is the whole model, loaded as --model) is never attached."""
        raise TypeError(f"{cls.title} has no generate flag: its artifact is loaded as the model, not attached")

    @classmethod
    def detach(cls, pipeline, handle) -> None:
        """Undo `attach`; the base model comes back exactly (techniques with a `generate_flag` define it)."""
        raise TypeError(f"{cls.title} has no generate flag: nothing was attached to detach")

    @classmethod
    def apply_generate_options(cls, pipeline, entries: list, handle, options) -> list:
        """Per-image options of this technique (a grid cell's LoRA weight); returns the entries as now in effect."""
        return entries

    @classmethod
    def a1111_fields(cls, entries: list) -> dict[str, Any]:
        """The PNG `parameters` fields A1111 writes for these entries (file, weight)."""
        return {}


def require_family(method: type[Method], family_name: str, family_title: str, techniques_there: list[str]) -> None:
    """One clear line when a technique makes no sense on a family (e.g. a Hypernetwork on Flux)."""
    if family_name not in method.families:
        raise TunelabError(
            f"{method.title} is not supported on {family_title} models (supported there: {', '.join(techniques_there)})"
        )
