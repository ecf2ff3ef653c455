"""Refining a predicted LoRA with ordinary LoRA steps (HyperDreamBooth's rank-relaxed fast fine-tuning).

The trainer runs a plain LoRA of the prediction's rank on the same layers, its down and up starting from the
predicted ones; both train in full, so the refined LoRA leaves the fixed bases.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer

from tunelab.errors import TunelabError
from tunelab.formats.lora_set import LoraSet
from tunelab.formats.module_paths import from_file_path
from tunelab.methods.lora import ADAPTER_NAME, LoraMethod
from tunelab.training.loop import train
from tunelab.training.prepare import prepare_run

# A fifth of the demo LoRA's rate: from a prediction, 20 steps at 5e-3 pulled the well-drawn subjects down
# (docs/compare.md: 0.122 mean fidelity against 0.150 at 1e-3, the prediction alone 0.140).
REFINE_LEARNING_RATE = 1e-3


class LoraFromStart(LoraMethod):
    """A LoRA whose training starts from given weights instead of PEFT's random down and zero up."""

    def __init__(self, options, start: LoraSet):
        super().__init__(options)
        self.start = start

    def setup(self, family) -> None:
        super().setup(family)
        adapted = set()
        with torch.no_grad():
            for name, module in self._modules.items():
                for path, layer in module.named_modules():
                    if not isinstance(layer, LoraLayer) or ADAPTER_NAME not in layer.lora_A:
                        continue
                    key = f"{name}.{from_file_path(name, path)}"
                    start = self.start.get(key)
                    if start is None:  # a layer the prediction leaves alone (a convolution) starts as a fresh LoRA: zero
                        continue
                    layer.lora_A[ADAPTER_NAME].weight.copy_(start.down)  # (r, in)
                    layer.lora_B[ADAPTER_NAME].weight.copy_(start.up * (start.scale / layer.scaling[ADAPTER_NAME]))  # (out, r)
                    adapted.add(key)
        if adapted != set(self.start):
            raise TunelabError(f"the starting LoRA adapts layers the refinement does not: {sorted(set(self.start) - adapted)[0]}")


def refine(start: LoraSet, model: str, images: Path, out: Path, prompt: str, steps: int, *, class_prompt: str | None = None,
           learning_rate: float = REFINE_LEARNING_RATE, seed: int = 0, targets: tuple[str, ...] = ("attention",)) -> Path:
    """`steps` LoRA steps from `start` on the images in folder `images`; returns the refined kohya LoRA file."""
    rank = next(iter(start.values())).rank
    values = {"model": model, "images": str(images), "out": str(out), "prompt": prompt, "steps": steps,
              "learning_rate": learning_rate, "rank": rank, "alpha": float(rank), "targets": list(targets),
              "batch_size": min(4, sum(1 for _ in images.iterdir())), "seed": seed, "log_with": "none", "overwrite": True}
    if class_prompt:
        values |= {"class_prompt": class_prompt, "num_class_images": 16, "class_sample_steps": 20}
    run = prepare_run(LoraMethod.name, values)
    method = LoraFromStart(run.method.options, start)
    return Path(train(run.options, method, run.resolved | {"initialised_from": "a predicted LoRA"}, run.family_options))
