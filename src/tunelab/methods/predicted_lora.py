"""A predicted LoRA (HyperDreamBooth style): a weight predictor (`tunelab hyper pretrain`) reads the run's training
images and writes the subject's LoRA in one forward pass before the first step; the run's steps, if any, refine it
(`--steps 0`: the prediction alone).

The refinement is an ordinary LoRA of the prediction's rank on the predictor's layer groups, its down and up
starting from the predicted ones; both train in full, so the refined LoRA leaves the predictor's fixed bases
(HyperDreamBooth's rank-relaxed fast fine-tuning). The artifact is an ordinary kohya LoRA file.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from peft.tuners.lora import LoraLayer
from PIL import Image

from tunelab.config import option
from tunelab.data.folder import ImageItem
from tunelab.data.images import load_image
from tunelab.errors import TunelabError
from tunelab.formats.lora_set import LoraSet
from tunelab.formats.module_paths import from_file_path
from tunelab.formats.weight_predictor import read_predictor_description
from tunelab.lora.merging import check_fits
from tunelab.lora.modules import adaptable_modules
from tunelab.lora.weight_predictor import load_predictor, predict_lora
from tunelab.methods.lora import ADAPTER_NAME, LoraMethod, LoraOptions
from tunelab.precision import PrecisionName

logger = logging.getLogger(__name__)

SHIPPED_PREDICTOR = Path(__file__).resolve().parent.parent / "toyworld" / "hypernet" / "predictor.safetensors"

# Half the demo LoRA's rate: from a prediction, larger rates pull the well-drawn subjects down (5e-3 on the first
# predictor; 2e-3 on the shipped one, docs/hyper.md "How to refine").
REFINE_LEARNING_RATE = 1e-3
# The predictor's own loss weighting (its stages 1 and 3) and the demo LoRA's; `demo --with-hyper` refines with it.
REFINE_MIN_SNR_GAMMA = 5.0


def predictor_path(hypernet: str) -> Path:
    """A predictor file, or `toyworld` for the shipped one."""
    if hypernet == "toyworld":
        if not SHIPPED_PREDICTOR.is_file():
            raise TunelabError("this tunelab ships no toyworld weight predictor yet; make one with `tunelab hyper pretrain`")
        return SHIPPED_PREDICTOR
    path = Path(hypernet)
    if not path.is_file():
        raise TunelabError(f"weight predictor not found: {path}")
    return path


def square_pixels(path: Path, resolution: int) -> np.ndarray:
    """An image centre-cropped to a square and resized to the predictor's resolution: (res, res, 3) uint8."""
    image = load_image(path)
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if side != resolution:  # toyworld's pixels are hard-edged: keep them so when only the scale differs
        square = square.resize((resolution, resolution), Image.NEAREST if side % resolution == 0 else Image.BICUBIC)
    return np.asarray(square)


def target_groups(facts: dict) -> tuple[str, ...]:
    """The LoRA target groups a predictor adapts (the first files named one group as a string)."""
    targets = facts.get("targets", "attention")
    return (targets,) if isinstance(targets, str) else tuple(targets)


def names_token(caption: str, token: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(token)}(?!\w)", caption) is not None


class LoraFromStart(LoraMethod):
    """A LoRA whose training starts from given weights instead of PEFT's random down and zero up."""

    def __init__(self, options: LoraOptions, start: LoraSet):
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


@dataclass
class PredictedLoraOptions:
    hypernet: str = option("the weight predictor: a file from `tunelab hyper pretrain`, or toyworld (the shipped one, "
                           "made for the toyworld base)")
    format: Literal["kohya", "peft"] = option("file layout of lora.safetensors", default="kohya")
    save_precision: PrecisionName = option("dtype of the saved LoRA weights", default="fp32")


class PredictedLoraMethod(LoraFromStart):
    """`tunelab train predicted_lora --hypernet toyworld --steps K`: the LoRA predicted from the training images, then K steps.
    Rank, alpha and layer groups are the predictor's; the captions must name its token."""

    name: ClassVar[str] = "predicted_lora"
    title: ClassVar[str] = "Predicted LoRA (weight predictor)"
    default_learning_rate: ClassVar[float] = REFINE_LEARNING_RATE
    options_schema: ClassVar[type] = PredictedLoraOptions
    families: ClassVar[frozenset[str]] = frozenset({"sd"})  # predictors are made on SD-shaped bases (toyworld)
    generate_flag = None  # the artifact is a LoRA file: generation loads it with LoRA's --lora
    reference_mode = None  # its steps are LoRA's: `bench speed --method lora` times them
    example_options: ClassVar[dict] = {"hypernet": "toyworld"}
    min_steps: ClassVar[int] = 0  # the prediction alone

    def __init__(self, options: PredictedLoraOptions):
        self.hypernet = predictor_path(options.hypernet)
        self.predictor, self.basis, self.facts = load_predictor(self.hypernet)  # read now: a bad file is refused before loading
        rank = self.basis.rank
        super().__init__(LoraOptions(rank=rank, alpha=float(rank), targets=list(target_groups(self.facts)),
                                     format=options.format, save_precision=options.save_precision), start={})
        self.images: list[Path] = []
        self.predict_seconds: float | None = None

    @property
    def token(self) -> str:
        return self.facts["token"]

    def see_training_images(self, items: list[ImageItem]) -> None:
        unnamed = next((item for item in items if not names_token(item.caption, self.token)), None)
        if unnamed is not None:
            raise TunelabError(f"the weight predictor answers to its token {self.token!r}: every caption must name it "
                               f"(e.g. --prompt \"a {self.token} circle\"), but {unnamed.path.name}'s is {unnamed.caption!r}")
        self.images = [item.path for item in items]

    def setup(self, family) -> None:
        if not self.images:
            raise TunelabError(f"{self.title} predicts its LoRA from a run's training images, and this one has none "
                               "(`tunelab bench speed` times its refine steps as --method lora)")
        pixels = [square_pixels(path, self.facts["resolution"]) for path in self.images]
        self.start, self.predict_seconds = predict_lora(self.predictor, self.basis, pixels)
        shapes = {key: tuple(module.weight.shape) for key, module in adaptable_modules(family.pipeline).items()}
        check_fits(self.start, shapes, f"the weight predictor {self.hypernet} (made for {self.facts.get('base_model')})")
        logger.info("predicted a rank-%d LoRA of %d layers from %d image(s) in %.3f s", self.basis.rank, self.basis.layers,
                    len(pixels), self.predict_seconds)
        super().setup(family)

    def save(self, out_dir: Path, metadata: dict[str, str]) -> Path:
        return super().save(out_dir, {**metadata, "tunelab_predictor_token": self.token,
                                      "tunelab_predict_seconds": f"{self.predict_seconds:.4f}"})

    # --- generation
    @classmethod
    def prompt_identifier(cls, training: dict) -> str | None:
        hypernet = training.get("hypernet")
        return read_predictor_description(predictor_path(hypernet))["token"] if hypernet else None  # the header only

    @classmethod
    def generate_options(cls, artifact: Path, identifier: str | None) -> dict:
        return LoraMethod.generate_options(artifact, identifier)

    @classmethod
    def composition_refusal(cls, training: dict) -> str | None:
        return None  # a plain LoRA file
