"""Load a single-file Stable Diffusion checkpoint (A1111 / ComfyUI style) as a diffusers pipeline, offline.

The weights are read once through `tunelab.safe_load` (so `.ckpt` files
never run pickled code), then diffusers' own original-layout converters build
each component from that state dict against a local diffusers-format config
folder: the caller's, or one shipped under `configs/` (`sd15/`, `sd21/`, `sdxl/`), picked
from the checkpoint's keys and shapes. The CLIP tokenizer is built from the
BPE merge list shipped next to those configs, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from tunelab.errors import TunelabError
from tunelab.models.original_layout import (
    SDXL_CONDITIONER_PREFIX,
    TEXT_ENCODERS,
    UNET_CONV_IN_KEY,
    UNET_PREFIX,
    VAE_READ_PREFIXES,
    first_cross_attention_key,
)
from tunelab.models.sd3_single_file import assemble_sd3_pipeline, is_sd3_checkpoint, sd3_config_dirs
from tunelab.models.single_file_parts import (  # noqa: F401 (build_clip_bpe_tokenizer: also imported from here)
    CONFIGS_DIR,
    as_tunelab_error,
    build_clip_bpe_tokenizer,
    load_scheduler,
    load_tokenizer,
    quiet_dtype_cast_warning,
    require_all_weights_loaded,
)
from tunelab.safe_load import load_state_dict

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
    """A StableDiffusionPipeline (SDXL: StableDiffusionXLPipeline, SD3: StableDiffusion3Pipeline) from one original-layout
    .safetensors/.ckpt file, offline.

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
    if is_sd3_checkpoint(state_dict):
        transformer_dir, components_dir = (config_dir, config_dir) if config_dir is not None else \
            sd3_config_dirs(state_dict, CONFIGS_DIR, path.name)
        return assemble_sd3_pipeline(state_dict, Path(transformer_dir), Path(components_dir), torch_dtype, path.name)
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
    with as_tunelab_error(f"cannot build the UNet from {source} with {config_dir}"), quiet_dtype_cast_warning():
        components["unet"] = UNet2DConditionModel.from_single_file(state_dict, subfolder="unet", **local)
    with as_tunelab_error(f"cannot build the VAE from {source} with {config_dir}"), quiet_dtype_cast_warning():
        components["vae"] = AutoencoderKL.from_single_file(state_dict, subfolder="vae", **local)
    for name, model_class in text_encoders.items():
        with as_tunelab_error(f"cannot build the {name.replace('_', ' ')} from {source} with {config_dir}"):
            # For SDXL, diffusers tells its two encoders apart by their widths (768 and 1280).
            components[name] = create_diffusers_clip_model_from_ldm(model_class, state_dict, subfolder=name, **local)
    for name, model in components.items():
        require_all_weights_loaded(model, name.replace("_", " "), source, config_dir)
    return components


def _assemble_pipeline(state_dict: dict[str, torch.Tensor], config_dir: Path, torch_dtype: torch.dtype, source: str):
    components = _build_components(state_dict, config_dir, torch_dtype, source, {"text_encoder": CLIPTextModel})
    return StableDiffusionPipeline(
        **components,
        tokenizer=load_tokenizer(config_dir),
        scheduler=load_scheduler(config_dir),
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
        scheduler=load_scheduler(config_dir),
        force_zeros_for_empty_prompt=True,
    )


def _use_prediction_type(pipeline, prediction_type: str, variant: str | None) -> None:
    pipeline.scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config, prediction_type=prediction_type)
    if variant == "sd21" and prediction_type == "epsilon":
        pipeline.unet.register_to_config(sample_size=SD2_BASE_SAMPLE_SIZE)


