"""Load a single-file Stable Diffusion checkpoint (A1111 / ComfyUI style) as a diffusers pipeline, offline.

The weights are read once through `tunelab.safe_load` (so `.ckpt` files
never run pickled code), then diffusers' own original-layout converters build
each component from that state dict against a local diffusers-format config
folder: the caller's, or one shipped under `configs/` (`sd15/`, `sd21/`, `sdxl/`), picked
from the checkpoint's keys and shapes. The CLIP tokenizer is built from the
BPE merge list shipped next to those configs, so nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import diffusers
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from tunelab.errors import TunelabError
from tunelab.models.original_layout import (
    SDXL_CONDITIONER_PREFIX,
    TEXT_ENCODERS,
    UNET_CONV_IN_KEY,
    UNET_PREFIX,
    VAE_READ_PREFIXES,
    first_cross_attention_key,
)
from tunelab.models.tokenizer import END_OF_WORD, _bytes_to_unicode
from tunelab.safe_load import load_state_dict

CONFIGS_DIR = Path(__file__).with_name("configs")
CLIP_BPE_FILE = CONFIGS_DIR / "clip_bpe_simple_vocab_16e6.txt.gz"
# CLIP's 49408-token vocabulary: 2 x 256 byte symbols, these merges, then 2 special tokens.
CLIP_MERGE_COUNT = 49152 - 256 - 2

SUPPORTED_FAMILIES = "Stable Diffusion 1.x (e.g. 1.5, CLIP ViT-L text encoder), 2.x (e.g. 2.1, OpenCLIP ViT-H) and SDXL base"
PREDICTION_TYPES = ("epsilon", "v_prediction")
# SD 2.x epsilon checkpoints are the 512 px "base" models; the shipped sd21 config is the 768 px v-model.
SD2_BASE_SAMPLE_SIZE = 64

REQUIRED_CONFIG_FILES = (
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
)

# (text encoder layout, UNet cross-attention width) -> shipped config folder
VARIANTS = {("clip", 768): "sd15", ("open_clip", 1024): "sd21", ("sdxl", 2048): "sdxl"}
LAYOUT_NAMES = {"clip": "an SD 1.x-style CLIP", "open_clip": "an SD 2.x-style OpenCLIP", "sdxl": "SDXL's CLIP-L + OpenCLIP-bigG"}
# The down level of the UNet's first cross-attention: SDXL's first level has none.
FIRST_ATTENTION_LEVEL = {"clip": 0, "open_clip": 0, "sdxl": 1}
SDXL_CONFIG_FILES = ("text_encoder_2/config.json",)


def load_single_file(
    path: str | Path,
    config_dir: str | Path | None = None,
    torch_dtype: torch.dtype = torch.float32,
    prediction_type: str | None = None,
):
    """A StableDiffusionPipeline (SDXL: StableDiffusionXLPipeline) from one original-layout .safetensors/.ckpt file, offline.

    `config_dir` is a diffusers-format folder describing the components (e.g. the base model
    saved with `save_pretrained`); without it the shipped SD 1.5, SD 2.1 or SDXL config is chosen from
    the weights. SD 2.x defaults to v-prediction (2.1, 768 px); pass `prediction_type="epsilon"`
    for 512 px base models, whose weights look the same.
    """
    path = Path(path)
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise TunelabError(f"unknown prediction type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise TunelabError(f"torch_dtype must be a floating torch dtype such as torch.float16, not {torch_dtype!r}")

    state_dict = _with_text_model_level(load_state_dict(path))
    sdxl = checkpoint_layout(state_dict, path.name) == "sdxl"
    variant = None
    if config_dir is None:
        variant = detect_variant(state_dict, source=path.name)
        config_dir = CONFIGS_DIR / variant
    config_dir = _checked_config_dir(config_dir, sdxl)

    pipeline = (_assemble_sdxl_pipeline if sdxl else _assemble_pipeline)(state_dict, config_dir, torch_dtype, path.name)
    if prediction_type is not None:
        _use_prediction_type(pipeline, prediction_type, variant)
    return pipeline


def detect_variant(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> str:
    """Name of the shipped config folder ("sd15", "sd21" or "sdxl") that fits these original-layout weights."""
    layout = checkpoint_layout(state_dict, source)
    in_channels = state_dict[UNET_CONV_IN_KEY].shape[1]  # conv_in weight: [C_out, C_in, 3, 3]
    if in_channels != 4:
        raise TunelabError(
            f"{source} has a UNet with {in_channels} input channels (inpainting, depth or pix2pix model); "
            f"only text-to-image checkpoints of {SUPPORTED_FAMILIES} are supported"
        )
    cross_attention = state_dict.get(first_cross_attention_key(FIRST_ATTENTION_LEVEL[layout]))
    context_width = None if cross_attention is None else cross_attention.shape[1]  # to_k: [C, context]
    variant = VARIANTS.get((layout, context_width))
    if variant is None:
        raise TunelabError(
            f"{source} does not match a known model ({LAYOUT_NAMES[layout]} text encoder, UNet cross-attention width {context_width}); "
            f"supported: {SUPPORTED_FAMILIES}. For other SD-structured models pass config_dir= a diffusers config folder"
        )
    return variant


def build_clip_bpe_tokenizer(pad_token: str = "<|endoftext|>", model_max_length: int = 77):
    """OpenAI CLIP's 49408-token BPE tokenizer, built from the merge list shipped with tunelab."""
    with gzip.open(CLIP_BPE_FILE, "rt", encoding="utf-8") as bpe_file:
        lines = bpe_file.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGE_COUNT + 1]]  # line 0 is a version header
    byte_symbols = list(_bytes_to_unicode().values())
    tokens = byte_symbols + [symbol + END_OF_WORD for symbol in byte_symbols] + ["".join(merge) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=model_max_length)


def load_tokenizer(config_dir: str | Path, subfolder: str = "tokenizer"):
    """The config folder's own tokenizer files if it has them, else the shipped CLIP BPE with its settings."""
    folder = Path(config_dir) / subfolder
    if (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file():
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    settings_file = folder / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    return build_clip_bpe_tokenizer(
        pad_token=settings.get("pad_token", "<|endoftext|>"),
        model_max_length=settings.get("model_max_length", 77),
    )


def checkpoint_layout(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> str:
    """The text encoder layout ("clip", "open_clip" or "sdxl") of an SD 1.x/2.x/SDXL checkpoint; refuses anything else."""
    def has(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in state_dict)

    vae = " or ".join(f"{prefix}*" for prefix in VAE_READ_PREFIXES)
    if has(SDXL_CONDITIONER_PREFIX):
        roots = [place.root for place in TEXT_ENCODERS["sdxl"].values()]
        if not all(has(root) for root in roots):
            raise TunelabError(
                f"{source} is an SDXL checkpoint without both text encoders ({' and '.join(f'{root}*' for root in roots)}), "
                f"e.g. the refiner, which is not supported; supported: {SUPPORTED_FAMILIES}"
            )
        if UNET_CONV_IN_KEY not in state_dict or not has(VAE_READ_PREFIXES):
            raise TunelabError(f"{source} is an incomplete SDXL checkpoint (it needs {UNET_PREFIX}* and {vae})")
        return "sdxl"
    if UNET_CONV_IN_KEY not in state_dict:
        raise TunelabError(f"{source} is not a Stable Diffusion checkpoint (no {UNET_PREFIX}* UNet weights); supported: {SUPPORTED_FAMILIES}")
    if not has(VAE_READ_PREFIXES):
        raise TunelabError(f"{source} has no VAE weights ({vae}); a full Stable Diffusion checkpoint is needed")
    for layout in ("clip", "open_clip"):
        if has(TEXT_ENCODERS[layout]["text_encoder"].root):
            return layout
    clip, open_clip = (TEXT_ENCODERS[layout]["text_encoder"].root for layout in ("clip", "open_clip"))
    raise TunelabError(
        f"{source} has no text encoder weights ({clip}* for SD 1.x or {open_clip}* for SD 2.x); "
        f"supported: {SUPPORTED_FAMILIES}"
    )


def _with_text_model_level(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Some exporters (old converters run under transformers >= 5.6) drop CLIP's `text_model.` level;
    # diffusers then finds no CLIP text encoder, so put it back.
    clip_places = [place for places in TEXT_ENCODERS.values() for place in places.values() if place.naming == "clip"]

    def fixed(key: str) -> str:
        for place in clip_places:
            if key.startswith(place.root) and not key.startswith(place.prefix):
                return place.prefix + key.removeprefix(place.root)
        return key

    return {fixed(key): tensor for key, tensor in state_dict.items()}


def _checked_config_dir(config_dir: str | Path, sdxl: bool = False) -> Path:
    config_dir = Path(config_dir)
    required = REQUIRED_CONFIG_FILES + (SDXL_CONFIG_FILES if sdxl else ())
    missing = [name for name in required if not (config_dir / name).is_file()]
    if missing:
        kind = "SDXL" if sdxl else "Stable Diffusion"
        raise TunelabError(f"config folder {config_dir} is not a diffusers {kind} folder: missing {', '.join(missing)}")
    return config_dir


def _build_components(state_dict, config_dir: Path, torch_dtype: torch.dtype, source: str, text_encoders) -> dict:
    """UNet, VAE and the named text encoders ({subfolder: transformers class}) from original-layout weights."""
    # diffusers' pipeline-level from_single_file only takes a path or URL and reads the file
    # itself; its per-component loaders take our safely loaded state dict.
    local = {"config": str(config_dir), "local_files_only": True, "torch_dtype": torch_dtype}
    components = {}
    with _as_tunelab_error(f"cannot build the UNet from {source} with {config_dir}"), _quiet_dtype_cast_warning():
        components["unet"] = UNet2DConditionModel.from_single_file(state_dict, subfolder="unet", **local)
    with _as_tunelab_error(f"cannot build the VAE from {source} with {config_dir}"), _quiet_dtype_cast_warning():
        components["vae"] = AutoencoderKL.from_single_file(state_dict, subfolder="vae", **local)
    for name, model_class in text_encoders.items():
        with _as_tunelab_error(f"cannot build the {name.replace('_', ' ')} from {source} with {config_dir}"):
            # For SDXL, diffusers tells its two encoders apart by their widths (768 and 1280).
            components[name] = create_diffusers_clip_model_from_ldm(model_class, state_dict, subfolder=name, **local)
    for name, model in components.items():
        _require_all_weights_loaded(model, name.replace("_", " "), source, config_dir)
    return components


def _assemble_pipeline(state_dict: dict[str, torch.Tensor], config_dir: Path, torch_dtype: torch.dtype, source: str):
    components = _build_components(state_dict, config_dir, torch_dtype, source, {"text_encoder": CLIPTextModel})
    return StableDiffusionPipeline(
        **components,
        tokenizer=load_tokenizer(config_dir),
        scheduler=_load_scheduler(config_dir),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _assemble_sdxl_pipeline(state_dict: dict[str, torch.Tensor], config_dir: Path, torch_dtype: torch.dtype, source: str):
    encoders = {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection}
    components = _build_components(state_dict, config_dir, torch_dtype, source, encoders)
    return StableDiffusionXLPipeline(
        **components,
        tokenizer=load_tokenizer(config_dir),
        tokenizer_2=load_tokenizer(config_dir, "tokenizer_2"),  # SDXL's second pads with "!"
        scheduler=_load_scheduler(config_dir),
        force_zeros_for_empty_prompt=True,
    )


def _require_all_weights_loaded(model: torch.nn.Module, name: str, source: str, config_dir: Path) -> None:
    # diffusers builds models on the meta device and silently leaves tensors it found no weights for there.
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    missing = [tensor_name for tensor_name, tensor in tensors if tensor.is_meta]
    if missing:
        raise TunelabError(
            f"{source} lacks {len(missing)} {name} weights that {config_dir} expects (e.g. {missing[0]}); "
            "the checkpoint and the config describe different models"
        )


def _load_scheduler(config_dir: Path):
    scheduler_dir = config_dir / "scheduler"
    class_name = json.loads((scheduler_dir / "scheduler_config.json").read_text())["_class_name"]
    scheduler_class = getattr(diffusers, class_name, None)
    if scheduler_class is None:
        raise TunelabError(f"unknown scheduler {class_name!r} in {scheduler_dir}")
    return scheduler_class.from_pretrained(str(scheduler_dir))


def _use_prediction_type(pipeline, prediction_type: str, variant: str | None) -> None:
    pipeline.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config, prediction_type=prediction_type)
    if variant == "sd21" and prediction_type == "epsilon":
        pipeline.unet.register_to_config(sample_size=SD2_BASE_SAMPLE_SIZE)


@contextmanager
def _quiet_dtype_cast_warning() -> Iterator[None]:
    # from_single_file ends with model.to(torch_dtype), and diffusers' ModelMixin.to then warns about
    # "modules that should be kept in float32" even when there are none (SD models have none).
    logger = logging.getLogger("diffusers.models.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _as_tunelab_error(what: str) -> Iterator[None]:
    try:
        yield
    except TunelabError:
        raise
    except Exception as error:  # diffusers reports shape and config mismatches with assorted types
        detail = " ".join(str(error).split())[:300] or type(error).__name__
        raise TunelabError(f"{what}: {detail}") from error
