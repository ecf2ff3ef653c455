"""Load an SD3 / SD3.5 single-file checkpoint (Stability's layout: `model.diffusion_model.joint_blocks.*`,
`first_stage_model.*`, `text_encoders.clip_l|clip_g|t5xxl.transformer.*`) as a StableDiffusion3Pipeline, offline.

The weights are read once through `tunelab.safe_load`; diffusers' own converters build each component against
a config folder: the caller's, or the shipped one for the variant diffusers' detection names (SD3 Medium,
SD3.5 Medium, SD3.5 Large: their transformer configs, with SD3.5 Medium's VAE, encoders and scheduler, which
all three share). T5's tokenizer (a SentencePiece vocabulary) is not shipped: without a config folder that
has one, the pipeline runs without T5, as `--no-t5` does, and says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.loaders.single_file_utils import (
    create_diffusers_clip_model_from_ldm,
    create_diffusers_t5_model_from_checkpoint,
    infer_diffusers_model_type,
)
from transformers import CLIPTextModelWithProjection, T5EncoderModel, T5TokenizerFast

from tunelab.errors import TunelabError
from tunelab.models.original_layout import SD3_JOINT_BLOCKS_KEY, SD3_TEXT_ENCODERS, VAE_READ_PREFIXES
from tunelab.models.single_file_parts import (
    as_tunelab_error,
    load_scheduler,
    load_tokenizer,
    quiet_dtype_cast_warning,
    require_all_weights_loaded,
)

logger = logging.getLogger(__name__)

# diffusers' name for the model a checkpoint's shapes describe -> the shipped folder with its transformer config
SD3_VARIANTS = {"sd3": "sd3_medium", "sd35_medium": "sd35_medium", "sd35_large": "sd35_large"}
SD3_SHARED_COMPONENTS = "sd35_medium"  # VAE, encoders, tokenizers and scheduler are the same for all three
T5_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


def is_sd3_checkpoint(keys) -> bool:
    return any(key.startswith(SD3_JOINT_BLOCKS_KEY) for key in keys)


def sd3_config_dirs(state_dict: dict[str, torch.Tensor], configs_dir: Path, source: str) -> tuple[Path, Path]:
    """(folder with the transformer's config, folder with the other components') for a checkpoint's shapes."""
    variant = SD3_VARIANTS.get(infer_diffusers_model_type(state_dict))
    if variant is None:
        raise TunelabError(f"{source} is an SD3-layout checkpoint of no known size (SD3 Medium, SD3.5 Medium, SD3.5 Large); "
                           "pass a diffusers config folder of its model")
    return configs_dir / variant, configs_dir / SD3_SHARED_COMPONENTS


def assemble_sd3_pipeline(state_dict, transformer_dir: Path, config_dir: Path, torch_dtype: torch.dtype, source: str):
    """The pipeline from its weights, each component against its config folder."""
    if not any(key.startswith(VAE_READ_PREFIXES) for key in state_dict):
        raise TunelabError(f"{source} has no VAE weights ({' or '.join(VAE_READ_PREFIXES)}); a full SD3 checkpoint is needed")
    local = {"local_files_only": True, "torch_dtype": torch_dtype}
    components = {}
    with as_tunelab_error(f"cannot build the transformer from {source} with {transformer_dir}"), quiet_dtype_cast_warning():
        # diffusers' converter renames keys in the dict it is given: each component gets its own.
        components["transformer"] = SD3Transformer2DModel.from_single_file(dict(state_dict), config=str(transformer_dir),
                                                                          subfolder="transformer", **local)
    with as_tunelab_error(f"cannot build the VAE from {source} with {config_dir}"), quiet_dtype_cast_warning():
        components["vae"] = AutoencoderKL.from_single_file(dict(state_dict), config=str(config_dir), subfolder="vae", **local)
    for name in ("text_encoder", "text_encoder_2"):
        if not any(key.startswith(SD3_TEXT_ENCODERS[name]) for key in state_dict):
            raise TunelabError(f"{source} has no {SD3_TEXT_ENCODERS[name]}* weights; SD3 needs both CLIP encoders")
        with as_tunelab_error(f"cannot build the {name.replace('_', ' ')} from {source} with {config_dir}"):
            components[name] = create_diffusers_clip_model_from_ldm(CLIPTextModelWithProjection, dict(state_dict), subfolder=name,
                                                                    config=str(config_dir), **local)
    tokenizer_3 = _t5_tokenizer(config_dir)
    has_t5 = any(key.startswith(SD3_TEXT_ENCODERS["text_encoder_3"]) for key in state_dict)
    components["text_encoder_3"] = None
    if has_t5 and tokenizer_3 is None:
        logger.warning("%s: T5 is left out (no T5 tokenizer in %s); pass a config folder with tokenizer_3/ to use it", source, config_dir)
    elif has_t5:
        with as_tunelab_error(f"cannot build T5 from {source} with {config_dir}"):
            components["text_encoder_3"] = create_diffusers_t5_model_from_checkpoint(
                T5EncoderModel, dict(state_dict), subfolder="text_encoder_3", config=str(config_dir), **local)
    for name, model in components.items():
        if model is not None:
            require_all_weights_loaded(model, name.replace("_", " "), source, config_dir)
    return StableDiffusion3Pipeline(
        **components,
        tokenizer=load_tokenizer(config_dir, "tokenizer"),
        tokenizer_2=load_tokenizer(config_dir, "tokenizer_2"),
        tokenizer_3=tokenizer_3 if components["text_encoder_3"] is not None else None,
        scheduler=load_scheduler(config_dir),
    )


def _t5_tokenizer(config_dir: Path):
    folder = config_dir / "tokenizer_3"
    if not any((folder / name).is_file() for name in T5_TOKENIZER_FILES):
        return None
    return T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)
