"""LoRA and its variants, trained with PEFT beside frozen weights (`--algorithm`):

    lora  W = W0 + (alpha / r) B A
    loha  W = W0 + (alpha / r) (B1 A1) * (B2 A2)            (Hadamard product; PEFT's LoHa)
    lokr  W = W0 + scale kron(W1, B2 A2)                     (Kronecker product; PEFT's LoKr)
    dora  W = m (W0 + (alpha / r) B A) / ||W0 + (alpha / r) B A||, m learned per output row

Generation loads plain LoRA files with diffusers' loader; the variants, which it does not read,
are merged into the weights and the originals put back exactly on detach.
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model
from peft.tuners.loha import LoHaLayer
from peft.tuners.lokr import LoKrLayer
from peft.tuners.lora import LoraLayer

from tunelab.config import option
from tunelab.errors import TunelabError
from tunelab.formats.kohya_lora import kohya_metadata, to_kohya_tensors
from tunelab.formats.lora_io import read_lora, write_lora
from tunelab.formats.lora_set import DoraModule, LohaModule, LokrModule, LoraModule, LoraSet, algorithm_title, split_component
from tunelab.formats.module_paths import from_file_path
from tunelab.lora.merging import apply_loras, check_fits
from tunelab.lora.modules import adaptable_modules
from tunelab.methods.base import GenerateFlag, Method
from tunelab.precision import PrecisionName, precision_dtype

TargetGroup = Literal["attention", "feedforward", "conv"]
Algorithm = Literal["lora", "loha", "lokr", "dora"]
ADAPTER_NAME = "default"
ADAPTER_PARAMETER_PREFIXES = (".lora_", ".hada_", ".lokr_")  # PEFT's LoRA (and DoRA), LoHa and LoKr parameters
LOKR_OPTIONS = ("factor", "decompose_both", "full_matrix")


@dataclass
class LoraOptions:
    algorithm: Algorithm = option(
        "lora; loha (Hadamard product of two low-rank pairs); lokr (Kronecker product of a small and a low-rank "
        "factor); dora (LoRA plus a learned magnitude per output row)", default="lora"
    )
    rank: int = option("LoRA rank r (LoHa: of each pair; LoKr: of the low-rank factor)", default=4)
    alpha: float | None = option("LoRA alpha; the update is scaled by alpha / rank (default: rank)", default=None)
    conv_rank: int | None = option("rank of convolutions with kernels larger than 1x1 (with --targets conv; default: --rank)", default=None)
    conv_alpha: float | None = option("alpha of those convolutions (default: --conv-rank)", default=None)
    factor: int | None = option("LoKr: split each dimension into f x dim / f; -1 (default): as balanced as the shape allows", default=None)
    decompose_both: bool = option("LoKr: make the smaller Kronecker factor a low-rank pair too", default=False)
    full_matrix: bool = option("LoKr: keep the larger Kronecker factor full (no low-rank pair; scale 1, alpha unused)", default=False)
    dropout: float = option("dropout on the LoRA path during training (lora, dora)", default=0.0)
    targets: list[TargetGroup] = option(
        "module groups to adapt: attention, feedforward, conv", default_factory=lambda: ["attention"]
    )
    train_unet: bool = option("train a LoRA on the denoiser", default=True)
    train_text_encoder: bool = option("train a LoRA on the text encoder(s)", default=False)
    text_encoder_lr: float | None = option("learning rate for the text-encoder LoRA (default: --learning-rate)", default=None)
    format: Literal["kohya", "peft"] = option("file layout of lora.safetensors", default="kohya")
    save_precision: PrecisionName = option("dtype of the saved LoRA weights", default="fp32")


def check_algorithm_options(options: LoraOptions) -> None:
    """Options another algorithm reads are refused by name, before any model loads."""
    algorithm = options.algorithm
    if algorithm not in ("lora", "loha", "lokr", "dora"):
        raise TunelabError(f"--algorithm {algorithm!r} is not one of lora, loha, lokr, dora")
    given = [name for name in LOKR_OPTIONS if getattr(options, name) not in (None, False)]
    if given and algorithm != "lokr":
        raise TunelabError(f"--{given[0].replace('_', '-')} applies to --algorithm lokr, not {algorithm}")
    if options.factor is not None and (options.factor == 0 or options.factor < -1):
        raise TunelabError(f"--factor is -1 (balanced) or a positive divisor, got {options.factor}")
    if options.decompose_both and options.full_matrix:
        raise TunelabError("--decompose-both and --full-matrix contradict each other (low-rank vs full factors)")
    if options.dropout and algorithm in ("loha", "lokr"):
        raise TunelabError(f"--dropout applies to --algorithm lora and dora; PEFT's {algorithm_title(algorithm)} has no dropout on its path")
    if (options.conv_rank is not None or options.conv_alpha is not None) and "conv" not in options.targets:
        raise TunelabError("--conv-rank and --conv-alpha apply to convolutions: add conv to --targets")
    if options.conv_rank is not None and options.conv_rank < 1:
        raise TunelabError(f"--conv-rank must be at least 1, got {options.conv_rank}")


def trained_adapter(layer: torch.nn.Module):
    """A PEFT-wrapped layer's trained adapter as a format-free module (None for any other layer).

    PEFT scales a LoKr by alpha / r even when both its factors are full; LyCORIS's files (and A1111 and
    ComfyUI) scale those by 1, so PEFT's scale is folded into w1 and alpha recorded as r, as LyCORIS writes it.
    """
    if isinstance(layer, LoraLayer) and ADAPTER_NAME in layer.lora_A:
        down, up = layer.lora_A[ADAPTER_NAME].weight.detach().float(), layer.lora_B[ADAPTER_NAME].weight.detach().float()
        adapter = LoraModule(down, up, float(layer.lora_alpha[ADAPTER_NAME]))
        if layer.use_dora.get(ADAPTER_NAME):
            magnitude = layer.lora_magnitude_vector[ADAPTER_NAME].weight.detach().float()  # (out,) or (1, out, 1, 1)
            adapter = DoraModule(adapter, magnitude.reshape(up.shape[0], *[1] * (down.dim() - 1)))  # (out, 1[, 1, 1])
        return adapter
    if isinstance(layer, (LoHaLayer, LoKrLayer)) and ADAPTER_NAME in layer.r:
        parts = {name: getattr(layer, name)[ADAPTER_NAME].detach().float()
                 for name in layer.adapter_layer_names if ADAPTER_NAME in getattr(layer, name)}
        alpha, rank = float(layer.alpha[ADAPTER_NAME]), layer.r[ADAPTER_NAME]
        if isinstance(layer, LoHaLayer):
            return LohaModule(parts, alpha)
        adapter = LokrModule(parts, alpha)
        if adapter.rank is None:
            adapter.parts["lokr_w1"] = adapter.parts["lokr_w1"] * (alpha / rank)
            adapter.alpha = float(rank)
        return adapter
    return None


def check_rank_fits(targeted: list[tuple[str, torch.nn.Module]], spatial: list[str], rank: int, conv_rank: int) -> None:
    """Refuse a rank above what a layer can use (kohya lets it pass): past min(out, in), up @ down gains no
    capacity, only file size. Refused rather than clamped, so the scale alpha / rank stays the one asked for."""
    for path, layer in targeted:
        weight = getattr(layer, "weight", None)
        if weight is None or weight.dim() < 2:
            continue
        usable = min(weight.shape[0], weight[0].numel())  # out, in * kh * kw
        asked, flag = (conv_rank, "--conv-rank") if path in spatial else (rank, "--rank")
        if asked > usable:
            raise TunelabError(f"{flag} {asked} is larger than layer {path} can use ({tuple(weight.shape)}: at most "
                               f"{usable}); a higher rank adds file size, not capacity: use {flag} {usable} or less")


class LoraMethod(Method):
    name: ClassVar[str] = "lora"
    title: ClassVar[str] = "LoRA"
    default_learning_rate: ClassVar[float] = 1e-4  # the usual LoRA rate (kohya, diffusers)
    options_schema: ClassVar[type] = LoraOptions
    artifact_name: ClassVar[str] = "lora.safetensors"
    families: ClassVar[frozenset[str]] = frozenset({"sd", "sdxl", "flux", "sd3"})
    generate_flag: ClassVar[GenerateFlag] = GenerateFlag(
        "lora", "LoRA file with optional weight, FILE[:WEIGHT]; repeat the flag for several", "loras", tag="lora",
        tag_aliases=("lyco",),
    )
    reference_mode: ClassVar[str] = "lora"

    def __init__(self, options: LoraOptions):
        if options.rank < 1:
            raise TunelabError(f"--rank must be at least 1, got {options.rank}")
        if not (options.train_unet or options.train_text_encoder):
            raise TunelabError("nothing to train: enable --train-unet or --train-text-encoder")
        check_algorithm_options(options)
        for flag, value in (("--alpha", options.alpha), ("--conv-alpha", options.conv_alpha)):
            if value is not None and not (math.isfinite(value) and value > 0):
                # kohya reads alpha 0 as "alpha = rank"; here that is leaving --alpha out.
                raise TunelabError(f"{flag} must be a positive number (leave it out for alpha = rank), got {value}")
        super().__init__(options)
        self.alpha = float(options.alpha if options.alpha is not None else options.rank)
        self.conv_rank = options.conv_rank or options.rank
        self.conv_alpha = float(options.conv_alpha if options.conv_alpha is not None else (options.conv_rank or self.alpha))

    @property
    def text_encoder_lr(self) -> float | None:
        return self.options.text_encoder_lr

    def _component_names(self, family) -> list[str]:
        names = [family.denoiser_name] if self.options.train_unet else []
        if self.options.train_text_encoder:
            names += list(family.trainable_text_encoder_names)
        return names

    def setup(self, family) -> None:
        self.family = family
        for name in self._component_names(family):
            groups = family.lora_targets.get(name, {})  # e.g. Flux's T5 takes no LoRA
            suffixes = sorted({s for group in self.options.targets for s in groups.get(group, ())})
            if not suffixes:
                continue
            module = family.module(name)
            inject_adapter_in_model(self._peft_config(module, suffixes), module, adapter_name=ADAPTER_NAME)
            for param_name, param in module.named_parameters():
                is_adapter = any(prefix in param_name for prefix in ADAPTER_PARAMETER_PREFIXES)
                param.requires_grad_(is_adapter)
                if is_adapter:
                    param.data = param.data.float()  # trainable weights stay fp32 under mixed precision
            self._modules[name] = module
        if not self._modules:
            raise TunelabError(f"no modules matched LoRA targets {self.options.targets}")
        if self.options.format == "kohya" and self.options.algorithm != "lora":
            self._check_kohya_layout()

    def _peft_config(self, module: torch.nn.Module, suffixes: list[str]):
        """PEFT's config for one component: the algorithm's adapter, with convolutions at their own rank."""
        options = self.options
        targeted = [(path, layer) for path, layer in module.named_modules()
                    if any(path == suffix or path.endswith("." + suffix) for suffix in suffixes)]
        spatial = [path for path, layer in targeted if isinstance(layer, torch.nn.Conv2d) and layer.kernel_size != (1, 1)]
        rank, alpha = options.rank, self.alpha
        if options.algorithm in ("lora", "dora"):
            check_rank_fits(targeted, spatial, rank, self.conv_rank)
        if options.full_matrix:
            # PEFT keeps LoKr's larger factor full once r reaches half its larger side; alpha = r gives
            # LyCORIS's scale 1 for full factors.
            rank = max(max(layer.weight.shape[:2]) for _, layer in targeted if hasattr(layer, "weight"))
            alpha = float(rank)
        patterns = {} if options.full_matrix else {
            "rank_pattern": {re.escape(path): self.conv_rank for path in spatial if self.conv_rank != rank},
            "alpha_pattern": {re.escape(path): self.conv_alpha for path in spatial if self.conv_alpha != alpha},
        }
        if options.algorithm in ("lora", "dora"):
            return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=options.dropout, target_modules=suffixes,
                              init_lora_weights="gaussian", use_dora=options.algorithm == "dora", **patterns)
        if options.algorithm == "loha":
            return LoHaConfig(r=rank, alpha=alpha, target_modules=suffixes, **patterns)
        return LoKrConfig(r=rank, alpha=alpha, target_modules=suffixes, decompose_both=options.decompose_both,
                          decompose_factor=options.factor if options.factor is not None else -1, **patterns)

    def _check_kohya_layout(self) -> None:
        """kohya's layout fuses some modules (Flux's q, k, v): refuse before training what it cannot hold."""
        try:
            to_kohya_tensors(self.lora_set(), self.family.base_model_version)
        except TunelabError as error:
            raise TunelabError(f"--algorithm {self.options.algorithm} with --format kohya: {error}") from None

    def lora_set(self) -> LoraSet:
        """The trained adapters as format-free tensors."""
        lora: LoraSet = {}
        for name, module in self._modules.items():
            for path, layer in module.named_modules():
                adapter = trained_adapter(layer)
                if adapter is not None:
                    # Keys never carry CLIP's `text_model.` level (CLIPTextModelWithProjection still has it).
                    lora[f"{name}.{from_file_path(name, path)}"] = adapter
        return lora

    def network_args(self) -> dict[str, str]:
        """The algorithm's settings as LyCORIS records them in `ss_network_args`."""
        args = {}
        if "conv" in self.options.targets and self.options.algorithm in ("loha", "lokr"):  # kernels may be flattened in their factors
            args.update(conv_dim=str(self.conv_rank), conv_alpha=str(self.conv_alpha))
        if self.options.algorithm == "lokr":
            factor = self.options.factor if self.options.factor is not None else -1
            args.update(factor=str(factor), decompose_both=str(self.options.decompose_both), full_matrix=str(self.options.full_matrix))
        if self.options.algorithm == "dora":
            args["wd_on_out"] = "True"
        return args

    def save(self, out_dir: Path, metadata: dict[str, str]) -> Path:
        dtype = precision_dtype(self.options.save_precision)
        lora = {key: module.to(dtype) for key, module in self.lora_set().items()}
        if self.options.format == "kohya":
            metadata = kohya_metadata(lora, self.family.base_model_version, metadata, self.network_args())
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
    def tag_weight(cls, multipliers, named):
        """A1111's <lora:NAME:TE:UNET> or te=/unet=: the text encoders' and the denoiser's multipliers (the
        denoiser's defaults to the text encoders'); {"te", "unet"} where they differ."""
        if len(multipliers) > 2 or "dyn" in named:
            raise TunelabError("a LoRA tag's dyn argument (a rank limit) is not supported; give NAME:TE:UNET at most")
        te = float(named.get("te", multipliers[0] if multipliers else 1.0))
        unet = float(named.get("unet", multipliers[1] if len(multipliers) > 1 else te))
        return te if te == unet else {"te": te, "unet": unet}

    @classmethod
    def requested(cls, options, tagged, adapters_dir):
        loras = super().requested(options, tagged, adapters_dir)
        if options.lora_weight is not None:
            if not loras:
                raise TunelabError("--lora-weight (or a lora_weight grid) needs a LoRA (--lora FILE or a <lora:NAME:W> tag)")
            loras = [(path, options.lora_weight) for path, _ in loras]
        return loras

    @classmethod
    def composition_refusal(cls, training: dict) -> str | None:
        algorithm = training.get("algorithm", "lora")
        return None if algorithm == "lora" else f"{algorithm_title(algorithm)} files cannot be stacked (plain LoRA only)"

    @classmethod
    def attach(cls, pipeline, specs, adapters_dir=None):
        return specs, attach_loras(pipeline, specs)

    @classmethod
    def detach(cls, pipeline, handle) -> None:
        detach_loras(pipeline, handle)

    @classmethod
    def apply_generate_options(cls, pipeline, entries, handle, options):
        if options.lora_weight is None or not handle.entries:
            return entries
        if handle.adapter_names:
            pipeline.set_adapters(handle.adapter_names, adapter_weights=[options.lora_weight] * len(handle.adapter_names))
        if handle.merged:
            handle.restore_weights()
            apply_loras(handle.modules, [(lora, options.lora_weight) for lora, _ in handle.merged])
        return [(path, options.lora_weight) for path, _ in entries]

    @classmethod
    def a1111_fields(cls, entries):
        def multipliers(weight) -> str:
            return f"{weight['te']}:{weight['unet']}" if isinstance(weight, dict) else str(weight)

        return {f"Lora {index}": f"{Path(path).stem}:{multipliers(weight)}" for index, (path, weight) in enumerate(entries)}


@dataclass
class AttachedLoras:
    """What `attach_loras` did: plain LoRAs loaded as diffusers adapters, the variants merged into the weights."""

    entries: list[tuple[Path, float]]
    adapter_names: list[str] = field(default_factory=list)
    merged: list[tuple[LoraSet, float]] = field(default_factory=list)
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)
    originals: dict[str, torch.Tensor] = field(default_factory=dict)  # module key -> its weight before merging

    def restore_weights(self) -> None:
        with torch.no_grad():
            for key, weight in self.originals.items():
                self.modules[key].weight.copy_(weight)


def attach_loras(pipeline, loras: list[tuple[Path, float]]) -> AttachedLoras:
    """Load LoRA files with diffusers' own loader (the one users' pipelines use) and weight them.

    Each file is read here (any layout tunelab reads: kohya, SGM, kohya Flux, PEFT, LyCORIS) and
    checked against the model's own modules, so a LoRA for another architecture is one clear
    error naming what does not fit; diffusers then loads the same weights in its own (PEFT)
    layout, alphas included, so what it computes does not depend on its converters (which know
    Flux.1's widths only). LoHa, LoKr and DoRA files, which diffusers does not load, are merged
    into the weights (first, on the base weights) and the originals kept for `detach_loras`.
    """
    modules = adaptable_modules(pipeline)
    weight_shapes = {key: tuple(module.weight.shape) for key, module in modules.items()}
    handle = AttachedLoras(list(loras), modules=modules)
    plain = []
    for path, weight in loras:
        if not path.is_file():
            raise TunelabError(f"LoRA file not found: {path}")
        lora = read_lora(path)[0]
        check_fits(lora, weight_shapes, str(path))
        if all(isinstance(module, LoraModule) for module in lora.values()):
            plain.append((path, lora, weight))
        else:
            handle.merged += [(part, part_weight) for part, part_weight in split_by_component(lora, weight) if part]
    for lora, _ in handle.merged:
        for key in lora:
            handle.originals.setdefault(key, modules[key].weight.detach().clone())
    apply_loras(modules, handle.merged)
    for index, (path, lora, _) in enumerate(plain):
        name = f"lora{index}"
        try:
            with tempfile.TemporaryDirectory() as folder:
                peft_file = write_lora(lora, Path(folder) / "lora.safetensors", "peft", {})
                pipeline.load_lora_weights(str(peft_file), adapter_name=name)
        except (ValueError, KeyError, RuntimeError, OSError) as error:
            handle.restore_weights()
            raise TunelabError(f"cannot load LoRA {path}: {str(error).splitlines()[0]}") from None
        handle.adapter_names.append(name)
    if handle.adapter_names:
        pipeline.set_adapters(handle.adapter_names, adapter_weights=[
            component_weights(pipeline, name, weight) for name, (_, _, weight) in zip(handle.adapter_names, plain)])
    return handle


def is_text_encoder(component: str) -> bool:
    return component.startswith("text_encoder")


def split_by_component(lora: LoraSet, weight) -> list[tuple[LoraSet, float]]:
    """A tag's {"te", "unet"} multipliers: the text-encoder modules at one weight, the denoiser's at the other."""
    if not isinstance(weight, dict):
        return [(lora, weight)]
    text = {key: module for key, module in lora.items() if is_text_encoder(split_component(key)[0])}
    denoiser = {key: module for key, module in lora.items() if key not in text}
    return [(text, weight["te"]), (denoiser, weight["unet"])]


def component_weights(pipeline, adapter_name: str, weight):
    """diffusers' set_adapters weight for one adapter: a number, or one per component it has weights in."""
    if not isinstance(weight, dict):
        return weight
    return {component: weight["te"] if is_text_encoder(component) else weight["unet"]
            for component, names in pipeline.get_list_adapters().items() if adapter_name in names}


def detach_loras(pipeline, handle: AttachedLoras) -> None:
    """Remove attached LoRAs; the base weights come back exactly (PEFT keeps them untouched, merged variants
    get their saved originals back), and once no adapter is left the wrapped layers are unwrapped too, so the
    model is the one loaded."""
    if handle.adapter_names:
        pipeline.delete_adapters(handle.adapter_names)
        if not any(pipeline.get_list_adapters().values()):
            pipeline.unload_lora_weights()
    handle.restore_weights()
