"""DreamBooth: fine-tune the denoiser itself (and optionally the text encoder).

The identifier prompt and the prior-preservation loss are the training recipe
(TrainOptions: --prompt, --class-prompt, ...), shared with LoRA; this module says
what trains and how the full model is saved.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from tunelab.config import option
from tunelab.errors import TunelabError
from tunelab.formats.sd_checkpoint import require_writable, save_single_file
from tunelab.methods.base import Method
from tunelab.precision import PrecisionName, precision_dtype


@dataclass
class DreamBoothOptions:
    train_text_encoder: bool = option("fine-tune the text encoder too", default=False)
    text_encoder_lr: float | None = option("learning rate of the text encoder (default: --learning-rate)", default=None)
    text_encoder_stop_step: int | None = option("freeze the text encoder again after this step", default=None)
    full_bf16: bool = option("keep the trained weights in bf16 too (less memory, less precise updates)", default=False)
    single_file: bool = option("also write OUT/model.safetensors in the original Stable Diffusion (SDXL: SGM) layout", default=False)
    save_precision: PrecisionName = option("dtype of the saved model", default="fp32")


class DreamBoothMethod(Method):
    name: ClassVar[str] = "dreambooth"
    title: ClassVar[str] = "DreamBooth (full fine-tuning)"
    default_learning_rate: ClassVar[float] = 5e-6  # full fine-tuning: diffusers' DreamBooth default
    options_schema: ClassVar[type] = DreamBoothOptions
    artifact_name: ClassVar[str] = "pipeline"  # a diffusers folder: the artifact is the whole model
    # Full fine-tuning of Flux.1's 12B transformer is not offered; SD3's transformer (2B-8B) is.
    families: ClassVar[frozenset[str]] = frozenset({"sd", "sdxl", "sd3"})
    reference_mode: ClassVar[str] = "full"

    def __init__(self, options: DreamBoothOptions):
        if options.text_encoder_stop_step is not None and not options.train_text_encoder:
            raise TunelabError("--text-encoder-stop-step needs --train-text-encoder")
        super().__init__(options)

    @property
    def text_encoder_lr(self) -> float | None:
        return self.options.text_encoder_lr

    def setup(self, family) -> None:
        if self.options.single_file:
            require_writable(family.pipeline)  # refused now, not after the run
        self.family = family
        names = [family.denoiser_name] + (list(family.trainable_text_encoder_names) if self.options.train_text_encoder else [])
        # The trainer has cast frozen weights to the mixed-precision dtype; bf16 trained weights need bf16 compute.
        if self.options.full_bf16 and family.module(family.denoiser_name).dtype != torch.bfloat16:
            raise TunelabError("--full-bf16 needs --mixed-precision bf16")
        dtype = torch.bfloat16 if self.options.full_bf16 else torch.float32
        for name in names:
            module = family.module(name)
            # Frozen copies were cast to the mixed-precision dtype; trained weights need their own.
            module.to(dtype=dtype).requires_grad_(True)
            self._modules[name] = module

    def after_step(self, step: int) -> None:
        if self.options.text_encoder_stop_step is not None and step == self.options.text_encoder_stop_step:
            # Parameters without gradients are skipped by AdamW, so the text encoder stays as it is now.
            for name in self.family.trainable_text_encoder_names:
                self._modules[name].requires_grad_(False)

    def save(self, out_dir: Path, metadata: dict[str, str]) -> Path:
        dtype = precision_dtype(self.options.save_precision)
        pipeline = self._pipeline_for_saving(dtype)
        folder = Path(out_dir) / self.artifact_name
        pipeline.save_pretrained(folder, safe_serialization=True)
        (folder / "tunelab_run.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
        if self.options.single_file:
            save_single_file(pipeline, Path(out_dir) / "model.safetensors", dtype=dtype, metadata=metadata)
        return folder

    def _pipeline_for_saving(self, dtype: torch.dtype):
        """A pipeline holding the weights to save in `dtype`, leaving the training model untouched."""
        pipeline = self.family.pipeline
        components = dict(pipeline.components)
        for name in self.family.frozen_modules():  # vae, text encoder(s), denoiser
            module = components[name]
            if any(p.dtype != dtype for p in module.parameters()):
                module = copy.deepcopy(module).to(device="cpu", dtype=dtype)
            components[name] = module
        return type(pipeline)(**components)

    @classmethod
    def generate_options(cls, artifact: Path, identifier: str | None) -> dict:
        return {"model": str(artifact)}
