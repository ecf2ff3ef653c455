"""LoRA: low-rank B·A beside frozen weights, W = W0 + (alpha / r)·B·A, injected with PEFT."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from tunelab.config import option
from tunelab.errors import TunelabError
from tunelab.formats.lora_set import LoraModule, LoraSet
from tunelab.methods.base import parameter_groups

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
    save_precision: Literal["fp32", "fp16", "bf16"] = option("dtype of the saved LoRA weights", default="fp32")


class LoraMethod:
    name: ClassVar[str] = "lora"
    default_learning_rate: ClassVar[float] = 1e-4  # the usual LoRA rate (kohya, diffusers)
    options_schema: ClassVar[type] = LoraOptions
    artifact_name: ClassVar[str] = "lora.safetensors"
    default_prompt: ClassVar[str | None] = None

    def __init__(self, options: LoraOptions):
        if options.rank < 1:
            raise TunelabError(f"--rank must be at least 1, got {options.rank}")
        if not (options.train_unet or options.train_text_encoder):
            raise TunelabError("nothing to train: enable --train-unet or --train-text-encoder")
        self.options = options
        self.alpha = float(options.alpha if options.alpha is not None else options.rank)
        self.family = None
        self._modules: dict[str, torch.nn.Module] = {}

    def _component_names(self, family) -> list[str]:
        names = [family.denoiser_name] if self.options.train_unet else []
        if self.options.train_text_encoder:
            names += list(family.text_encoder_names)
        return names

    def setup(self, family) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        from tunelab.models.family import require_technique

        require_technique(family, self.name)
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

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return dict(self._modules)

    def learned_parameter_count(self) -> int:
        from tunelab.methods.base import group_parameter_count

        return group_parameter_count(self.trainable_parameters())

    def trainable_parameters(self) -> list[dict]:
        return parameter_groups(self._modules, self.family.text_encoder_names, self.options.text_encoder_lr)

    def training_captions(self, captions: list[str]) -> list[str]:
        return captions

    def after_step(self, step: int) -> None:
        pass

    def lora_set(self) -> LoraSet:
        """The trained adapters as format-free tensors."""
        from peft.utils import get_peft_model_state_dict

        from tunelab.formats.module_paths import from_file_path

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
        from tunelab.formats.kohya_lora import kohya_metadata
        from tunelab.formats.lora_io import write_lora
        from tunelab.formats.safetensors_io import precision_dtype

        dtype = precision_dtype(self.options.save_precision)
        lora = {key: module.to(dtype) for key, module in self.lora_set().items()}
        if self.options.format == "kohya":
            metadata = kohya_metadata(lora, self.family.base_model_version, metadata)
        return write_lora(lora, Path(out_dir) / self.artifact_name, self.options.format, metadata)


def parse_weighted_path(spec: str) -> tuple[Path, float]:
    """'FILE' or 'FILE:WEIGHT' -> (path, weight); a trailing part that is not a number belongs to the path."""
    head, _, tail = spec.rpartition(":")
    if head:
        try:
            return Path(head), float(tail)
        except ValueError:
            pass
    return Path(spec), 1.0


def attach_loras(pipeline, loras: list[tuple[Path, float]]) -> list[str]:
    """Load LoRA files with diffusers' own loader (the one users' pipelines use) and weight them.

    Each file is read here (any layout tunelab reads: kohya, SGM, kohya Flux, PEFT, LoCon) and
    checked against the model's own modules, so a LoRA for another architecture is one clear
    error naming what does not fit; diffusers then loads the same weights in its own (PEFT)
    layout, alphas included, so what it computes does not depend on its converters (which know
    Flux.1's widths only).
    """
    import tempfile

    from tunelab.formats.lora_io import read_lora, write_lora
    from tunelab.lora.merge import check_fits
    from tunelab.lora.modules import adaptable_modules

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
    """Remove attached LoRAs; the base weights come back exactly (PEFT keeps them untouched)."""
    if names:
        pipeline.delete_adapters(names)
