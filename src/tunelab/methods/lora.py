"""LoRA: low-rank B·A beside frozen weights, W = W0 + (alpha / r)·B·A, injected with PEFT."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict

from tunelab.config import option
from tunelab.errors import TunelabError
from tunelab.formats.kohya_lora import kohya_metadata
from tunelab.formats.lora_io import read_lora, write_lora
from tunelab.formats.lora_set import LoraModule, LoraSet
from tunelab.formats.module_paths import from_file_path
from tunelab.lora.merge import check_fits
from tunelab.lora.modules import adaptable_modules
from tunelab.methods.base import GenerateFlag, Method, parse_weighted_path  # noqa: F401 (lora tools parse FILE:WEIGHT)
from tunelab.precision import PrecisionName, precision_dtype

TargetGroup = Literal["attention", "feedforward", "conv"]
ADAPTER_NAME = "default"


@dataclass
class LoraOptions:
    rank: int = option("LoRA rank r", default=4)
    alpha: float | None = option("LoRA alpha; the update is scaled by alpha / rank (default: rank)", default=None)
    dropout: float = option("dropout on the LoRA path during training", default=0.0)
    targets: list[TargetGroup] = option(
        "module groups to adapt: attention, feedforward, conv", default_factory=lambda: ["attention"]
    )
    train_unet: bool = option("train a LoRA on the denoiser", default=True)
    train_text_encoder: bool = option("train a LoRA on the text encoder(s)", default=False)
    text_encoder_lr: float | None = option("learning rate for the text-encoder LoRA (default: --learning-rate)", default=None)
    format: Literal["kohya", "peft"] = option("file layout of lora.safetensors", default="kohya")
    save_precision: PrecisionName = option("dtype of the saved LoRA weights", default="fp32")


class LoraMethod(Method):
    name: ClassVar[str] = "lora"
    title: ClassVar[str] = "LoRA"
    default_learning_rate: ClassVar[float] = 1e-4  # the usual LoRA rate (kohya, diffusers)
    options_schema: ClassVar[type] = LoraOptions
    artifact_name: ClassVar[str] = "lora.safetensors"
    families: ClassVar[frozenset[str]] = frozenset({"sd", "sdxl", "flux"})
    generate_flag: ClassVar[GenerateFlag] = GenerateFlag(
        "lora", "LoRA file with optional weight, FILE[:WEIGHT]; repeat the flag for several", "loras", tag="lora"
    )
    reference_mode: ClassVar[str] = "lora"

    def __init__(self, options: LoraOptions):
        if options.rank < 1:
            raise TunelabError(f"--rank must be at least 1, got {options.rank}")
        if not (options.train_unet or options.train_text_encoder):
            raise TunelabError("nothing to train: enable --train-unet or --train-text-encoder")
        super().__init__(options)
        self.alpha = float(options.alpha if options.alpha is not None else options.rank)

    @property
    def text_encoder_lr(self) -> float | None:
        return self.options.text_encoder_lr

    def _component_names(self, family) -> list[str]:
        names = [family.denoiser_name] if self.options.train_unet else []
        if self.options.train_text_encoder:
            names += list(family.text_encoder_names)
        return names

    def setup(self, family) -> None:
        self.family = family
        for name in self._component_names(family):
            groups = family.lora_targets.get(name, {})  # e.g. Flux's T5 takes no LoRA
            suffixes = sorted({s for group in self.options.targets for s in groups.get(group, ())})
            if not suffixes:
                continue
            config = LoraConfig(
                r=self.options.rank,
                lora_alpha=self.alpha,
                lora_dropout=self.options.dropout,
                target_modules=suffixes,
                init_lora_weights="gaussian",
            )
            module = family.module(name)
            inject_adapter_in_model(config, module, adapter_name=ADAPTER_NAME)
            for param_name, param in module.named_parameters():
                is_lora = ".lora_" in param_name
                param.requires_grad_(is_lora)
                if is_lora:
                    param.data = param.data.float()  # trainable weights stay fp32 under mixed precision
            self._modules[name] = module
        if not self._modules:
            raise TunelabError(f"no modules matched LoRA targets {self.options.targets}")

    def lora_set(self) -> LoraSet:
        """The trained adapters as format-free tensors."""
        lora: LoraSet = {}
        for name, module in self._modules.items():
            state = get_peft_model_state_dict(module, adapter_name=ADAPTER_NAME)
            for key, down in state.items():
                if not key.endswith(".lora_A.weight"):
                    continue
                path = key[: -len(".lora_A.weight")]
                up = state[f"{path}.lora_B.weight"]
                # Keys never carry CLIP's `text_model.` level (CLIPTextModelWithProjection still has it).
                lora[f"{name}.{from_file_path(name, path)}"] = LoraModule(down.detach().float(), up.detach().float(), self.alpha)
        return lora

    def save(self, out_dir: Path, metadata: dict[str, str]) -> Path:
        dtype = precision_dtype(self.options.save_precision)
        lora = {key: module.to(dtype) for key, module in self.lora_set().items()}
        if self.options.format == "kohya":
            metadata = kohya_metadata(lora, self.family.base_model_version, metadata)
        return write_lora(lora, Path(out_dir) / self.artifact_name, self.options.format, metadata)


    # --- generation
    @classmethod
    def generate_fields(cls):
        return super().generate_fields() + [
            ("lora_weight", float | None, option("one weight for every LoRA, replacing the ones given with them", default=None)),
        ]

    @classmethod
    def grid_parameters(cls) -> dict[str, type]:
        return {"lora_weight": float}

    @classmethod
    def requested(cls, options, tagged, adapters_dir):
        loras = super().requested(options, tagged, adapters_dir)
        if options.lora_weight is not None:
            if not loras:
                raise TunelabError("--lora-weight (or a lora_weight grid) needs a LoRA (--lora FILE or a <lora:NAME:W> tag)")
            loras = [(path, options.lora_weight) for path, _ in loras]
        return loras

    @classmethod
    def attach(cls, pipeline, specs, adapters_dir=None):
        return specs, attach_loras(pipeline, specs)

    @classmethod
    def detach(cls, pipeline, handle) -> None:
        detach_loras(pipeline, handle)

    @classmethod
    def apply_generate_options(cls, pipeline, entries, handle, options):
        if options.lora_weight is None or not handle:
            return entries
        pipeline.set_adapters(handle, adapter_weights=[options.lora_weight] * len(handle))
        return [(path, options.lora_weight) for path, _ in entries]

    @classmethod
    def a1111_fields(cls, entries):
        return {f"Lora {index}": f"{Path(path).stem}:{weight}" for index, (path, weight) in enumerate(entries)}


def attach_loras(pipeline, loras: list[tuple[Path, float]]) -> list[str]:
    """Load LoRA files with diffusers' own loader (the one users' pipelines use) and weight them.

    Each file is read here (any layout tunelab reads: kohya, SGM, kohya Flux, PEFT, LoCon) and
    checked against the model's own modules, so a LoRA for another architecture is one clear
    error naming what does not fit; diffusers then loads the same weights in its own (PEFT)
    layout, alphas included, so what it computes does not depend on its converters (which know
    Flux.1's widths only).
    """
    weight_shapes = {key: tuple(module.weight.shape) for key, module in adaptable_modules(pipeline).items()}
    names = []
    for index, (path, _) in enumerate(loras):
        if not path.is_file():
            raise TunelabError(f"LoRA file not found: {path}")
        lora = read_lora(path)[0]
        check_fits(lora, weight_shapes, str(path))
        name = f"lora{index}"
        try:
            with tempfile.TemporaryDirectory() as folder:
                peft_file = write_lora(lora, Path(folder) / "lora.safetensors", "peft", {})
                pipeline.load_lora_weights(str(peft_file), adapter_name=name)
        except (ValueError, KeyError, RuntimeError, OSError) as error:
            raise TunelabError(f"cannot load LoRA {path}: {str(error).splitlines()[0]}") from None
        names.append(name)
    if names:
        pipeline.set_adapters(names, adapter_weights=[weight for _, weight in loras])
    return names


def detach_loras(pipeline, names: list[str]) -> None:
    """Remove attached LoRAs; the base weights come back exactly (PEFT keeps them untouched), and once no
    adapter is left the wrapped layers are unwrapped too, so the model is the one loaded."""
    if names:
        pipeline.delete_adapters(names)
        if not any(pipeline.get_list_adapters().values()):
            pipeline.unload_lora_weights()
