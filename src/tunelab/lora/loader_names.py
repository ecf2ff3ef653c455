"""A LoRA file's modules as the loaders see them, and the names a model's layers go by in LoRA files.

A file is read raw (no tunelab conversion): each key is split into a module name and a part
(`lora_unet_x.lora_down.weight` -> `lora_unet_x` + `lora_down.weight`; PEFT's
`unet.a.b.lora_A.weight` -> `unet.a.b` + `lora_A.weight`), because the loaders judge files by
their keys, and a file tunelab itself would refuse must still be explained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tunelab.errors import TunelabError
from tunelab.formats.kohya_lora import is_sdxl, kohya_name, kohya_prefixes, transformer_layout
from tunelab.formats.lora_set import split_component
from tunelab.formats.module_paths import to_file_path
from tunelab.lora.modules import adaptable_modules
from tunelab.models.family import family_for

# Parts of one module, by algorithm (LyCORIS names for kohya files, PEFT's for PEFT files).
LORA_PAIR = ("lora_down.weight", "lora_up.weight")
PEFT_PAIR = ("lora_A.weight", "lora_B.weight")
OPTIONAL_PARTS = frozenset({"alpha", "lora_mid.weight", "dora_scale", "lora_magnitude_vector"})
LOHA_PARTS = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"})
LOKR_PARTS = frozenset({"lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2"})
KOHYA_PREFIX = "lora_"  # every kohya module name starts with it: lora_unet_, lora_te_, lora_te1_, ...


@dataclass
class FileModule:
    """One module of a file: its name as written and its parts (part name -> tensor)."""

    name: str
    parts: dict[str, torch.Tensor]

    @property
    def kohya_style(self) -> bool:
        return self.name.startswith(KOHYA_PREFIX) and "." not in self.name

    @property
    def kind(self) -> str:
        """lora, loha, lokr; `down only` / `up only` for a pair missing its partner; `unknown` otherwise."""
        names = set(self.parts)
        for down, up in (LORA_PAIR, PEFT_PAIR):
            if down in names or up in names:
                if names - {down, up} - OPTIONAL_PARTS:
                    return "unknown"
                return "lora" if {down, up} <= names else "down only" if down in names else "up only"
        if names and names - OPTIONAL_PARTS <= LOHA_PARTS and "hada_w1_a" in names:
            return "loha"
        if names and names - OPTIONAL_PARTS <= LOKR_PARTS and names & LOKR_PARTS:
            return "lokr"
        return "unknown"

    def delta_shape(self) -> tuple[int, ...] | None:
        """(out, in) of a plain LoRA's change ((out, in, kh, kw) for a conv), from its pair; else None."""
        for down, up in (LORA_PAIR, PEFT_PAIR):
            if down in self.parts and up in self.parts:
                down_shape, up_shape = self.parts[down].shape, self.parts[up].shape
                return (up_shape[0], *down_shape[1:])
        return None


def file_modules(tensors: dict[str, torch.Tensor]) -> list[FileModule]:
    modules: dict[str, FileModule] = {}
    for key, tensor in tensors.items():
        name, part = _split_key(key)
        modules.setdefault(name, FileModule(name, {})).parts[part] = tensor
    return sorted(modules.values(), key=lambda module: module.name)


def _split_key(key: str) -> tuple[str, str]:
    if key.startswith(KOHYA_PREFIX):
        name, _, part = key.partition(".")
        return name, part
    for part in (*PEFT_PAIR, *OPTIONAL_PARTS, *LOHA_PARTS, *LOKR_PARTS, *LORA_PAIR):
        if key.endswith("." + part):
            return key[: -len(part) - 1], part
    name, _, part = key.rpartition(".")
    return (name, part) if name else (key, "")


@dataclass
class ModelNames:
    """The layers of a model (key "<component>.<module path>" -> weight shape) and what files call them."""

    family: object
    shapes: dict[str, tuple[int, ...]]
    kohya: dict[str, list[str]] = field(default_factory=dict)  # kohya name (diffusers blocks) -> layers
    original: dict[str, list[str]] = field(default_factory=dict)  # kohya name in SGM blocks (SDXL) -> layers
    fused: dict[str, list[str]] = field(default_factory=dict)  # kohya transformer name -> the layers it fuses, in order
    peft: dict[str, str] = field(default_factory=dict)  # PEFT file name ("unet.a.b", "text_encoder.text_model...") -> layer
    kohya_layout: object = None  # the family's kohya transformer layout (formats/kohya_fused.py), None on UNet models

    @property
    def unet_model(self) -> bool:
        return self.family.denoiser_name == "unet"

    @property
    def diffusers_reads_kohya(self) -> bool:
        return self.kohya_layout is None or self.kohya_layout.diffusers_reads

    def kohya_layers(self, name: str) -> list[str] | None:
        return self.kohya.get(name) or self.original.get(name) or self.fused.get(name)


def model_names(pipeline) -> ModelNames:
    family = family_for(pipeline)
    modules = adaptable_modules(pipeline)
    names = ModelNames(family, {key: tuple(module.weight.shape) for key, module in modules.items()})
    prefixes = kohya_prefixes(split_component(key)[0] for key in modules)
    layout = transformer_layout(family.base_model_version)
    if not names.unet_model:
        names.kohya_layout = layout
    fused_parts: dict[str, dict[int, str]] = {}
    for key in modules:
        component, path = split_component(key)
        names.peft[f"{component}.{to_file_path(component, path)}"] = key
        if component == family.denoiser_name and not names.unet_model:
            found = layout.kohya_module(path)
            if found is not None:
                fused_parts.setdefault(found[0], {})[found[1]] = key
            continue
        names.kohya[kohya_name(key, prefixes)] = [key]
        if component == family.denoiser_name and is_sdxl(family.base_model_version):
            try:
                names.original[kohya_name(key, prefixes, sgm=True)] = [key]
            except TunelabError:  # a layer with no place in SDXL's original layout (none in SDXL itself)
                pass
    names.fused = {name: [parts[index] for index in sorted(parts)] for name, parts in fused_parts.items()}
    return names

