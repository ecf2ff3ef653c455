"""Built-in model presets: small pipelines built from config, never downloaded.

`tiny-sd` keeps Stable Diffusion's structure (VAE + CLIP text encoder + UNet with
cross-attention, DDPM-trained epsilon schedule) at a few hundred thousand
parameters, so tests and examples train and sample in seconds on a CPU. `tiny-sdxl` and
`tiny-flux` and `tiny-sd3` do the same for SDXL, Flux.1 and SD3 (see their builders).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from tunelab.errors import TunelabError
from tunelab.models.diffusers_folder import load_diffusers_folder
from tunelab.models.tokenizer import build_clip_tokenizer, build_t5_tokenizer


def _tiny_vae(**overrides):
    """SD's VAE structure at two levels (a 2x VAE); SDXL and Flux change its latent scaling."""
    settings = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    return AutoencoderKL(**{**settings, **overrides})


def tiny_clip(model_class, tokenizer, hidden_size: int, positions: int = 77, **extra):
    """A two-layer CLIP text encoder (CLIPTextModel, or CLIPTextModelWithProjection for SDXL's second)."""
    return model_class(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=positions,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **extra,
        )
    )


def final_norm(encoder) -> torch.nn.LayerNorm:
    """A CLIP text encoder's last LayerNorm (with or without the projection head)."""
    return next(module for name, module in encoder.named_modules() if name.endswith("final_layer_norm"))


def preset_clip(model_class, tokenizer, hidden_size: int, **extra):
    """`tiny_clip` as the presets ship it: its final norm's bias drawn (seeded by the caller), as a trained
    encoder's is. A fresh LayerNorm's zero bias makes every output vector zero-mean, and A1111's prompt-weight
    mean restoration would then divide rounding noise by rounding noise."""
    encoder = tiny_clip(model_class, tokenizer, hidden_size, **extra)
    with torch.no_grad():
        final_norm(encoder).bias.normal_(mean=0.1, std=0.1)  # (hidden_size,)
    return encoder


def sd_pipeline(**components):
    """A Stable Diffusion pipeline of these components, without the NSFW checker (never needed here)."""
    return StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def build_tiny_sd(seed: int = 0):
    tokenizer = build_clip_tokenizer()
    # Each component gets its own seeded generator state so the build is deterministic.
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,  # latent side: 32 px images through a 2x VAE
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = _tiny_vae()
    torch.manual_seed(seed + 2)
    text_encoder = preset_clip(CLIPTextModel, tokenizer, hidden_size=32)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    return sd_pipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def build_tiny_sdxl(seed: int = 0):
    """SDXL's structure in miniature: CLIP-L-like and bigG-like text encoders of different widths (32
    and 48, so their embedding files differ), pooled projection, `text_time` size conditioning, and
    the UNet laid out as SDXL's (2 layers per level, the first level without attention, then
    attention levels with more transformer layers), so SGM block names map exactly as on SDXL."""


    tokenizer, tokenizer_2 = build_clip_tokenizer(), build_clip_tokenizer()
    time_embed_dim, pooled_dim = 8, 32
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,  # latent side: 32 px images through a 2x VAE
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=32 + 48,  # both encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + pooled_dim,  # 6 time ids + pooled text
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = _tiny_vae(scaling_factor=0.13025)
    torch.manual_seed(seed + 2)
    text_encoder = preset_clip(CLIPTextModel, tokenizer, hidden_size=32)
    torch.manual_seed(seed + 3)
    text_encoder_2 = preset_clip(CLIPTextModelWithProjection, tokenizer_2, hidden_size=48, projection_dim=pooled_dim)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


# Flux.1's latent side at its default size is 128 (1024 px); the tiny model is trained and sampled at 32 px.
TINY_FLUX_SAMPLE_SIZE = 16


def build_tiny_flux(seed: int = 0):
    """Flux.1-dev's structure in miniature: one double-stream and one single-stream block, rotary
    axes, guidance embedding, a 16-channel-packed latent (4 VAE channels x 2x2 patches), a CLIP
    text encoder for the pooled vector and a T5 encoder for the sequence."""


    tokenizer, tokenizer_2 = build_clip_tokenizer(), build_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * 4,  # VAE channels x packed 2x2 patch
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5 width
        pooled_projection_dim=32,  # CLIP width
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    torch.manual_seed(seed + 1)
    vae = _tiny_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    torch.manual_seed(seed + 2)
    text_encoder = preset_clip(CLIPTextModel, tokenizer, hidden_size=32)
    torch.manual_seed(seed + 3)
    text_encoder_2 = tiny_t5(tokenizer_2, width=32)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    pipeline = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipeline.default_sample_size = TINY_FLUX_SAMPLE_SIZE
    return pipeline


def tiny_t5(tokenizer, width: int):
    """A two-layer T5 encoder of this width."""
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=width,
            d_kv=8,
            d_ff=2 * width,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            is_encoder_decoder=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )


# SD3's latent side at its default size is 128 (1024 px); the tiny model is trained and sampled at 32 px.
TINY_SD3_SAMPLE_SIZE = 16
# (CLIP-L, CLIP-G, T5) widths: the CLIPs side by side (40) are narrower than T5 (48), so the pad to T5's width is exercised.
TINY_SD3_WIDTHS = (16, 24, 48)


def build_tiny_sd3(seed: int = 0, medium: bool = False):
    """SD3's structure in miniature: a two-block MMDiT on 2x2 patches (the last block's context stream
    pre-only), CLIP-L and CLIP-G with projections (CLIP-L's the identity, as SD3 single files have it), a T5
    encoder, and SD3's shifted flow-matching scheduler. `medium`: SD3.5 Medium's MMDiT-X (a dual-attention
    first block, QK RMS-norm)."""
    tokenizer, tokenizer_2, tokenizer_3 = build_clip_tokenizer(), build_clip_tokenizer(), build_t5_tokenizer()
    clip_l, clip_g, t5 = TINY_SD3_WIDTHS
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=TINY_SD3_SAMPLE_SIZE,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=t5,
        caption_projection_dim=16,  # = heads x head width, as in SD3
        pooled_projection_dim=clip_l + clip_g,
        pos_embed_max_size=16,
        dual_attention_layers=(0,) if medium else (),
        qk_norm="rms_norm" if medium else None,
    )
    torch.manual_seed(seed + 1)
    vae = _tiny_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305)
    torch.manual_seed(seed + 2)
    text_encoder = preset_clip(CLIPTextModelWithProjection, tokenizer, hidden_size=clip_l, projection_dim=clip_l)
    with torch.no_grad():
        text_encoder.text_projection.weight.copy_(torch.eye(clip_l))
    torch.manual_seed(seed + 3)
    text_encoder_2 = preset_clip(CLIPTextModelWithProjection, tokenizer_2, hidden_size=clip_g, projection_dim=clip_g)
    torch.manual_seed(seed + 4)
    text_encoder_3 = tiny_t5(tokenizer_3, width=t5)
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    pipeline.default_sample_size = TINY_SD3_SAMPLE_SIZE
    return pipeline


# The pretrained toyworld base ships inside the package as a diffusers folder (fp16 weights and its model card);
# toyworld/ makes it (`tunelab toyworld pretrain`), the preset only loads it.
TOYWORLD_BASE = Path(__file__).parent.parent / "toyworld" / "base"


def load_toyworld(seed: int = 0):
    """The shipped weights, in fp32 (the seed is ignored: a pretrained model has no random init)."""
    if not (TOYWORLD_BASE / "model_index.json").is_file():
        raise TunelabError(f"the toyworld base is missing from this install ({TOYWORLD_BASE}); "
                           "build one with `tunelab toyworld pretrain --out DIR` and pass --model DIR")
    return load_diffusers_folder(TOYWORLD_BASE, torch.float32)


PRESETS: dict[str, Callable[..., object]] = {
    "tiny-sd": build_tiny_sd,
    "tiny-sdxl": build_tiny_sdxl,
    "tiny-flux": build_tiny_flux,
    "tiny-sd3": build_tiny_sd3,
    "toyworld": load_toyworld,
}
# Raised when the seeded builders change what they build (2: CLIP encoders' final norms get a bias), so caches
# keyed by a preset's identity (class images) are not reused across builds.
TINY_BUILD = 2
# Presets loaded from shipped weights rather than built from a seed: what names them is their weights.
PRESET_WEIGHTS = {"toyworld": TOYWORLD_BASE}
# The diffusers pipeline class each preset builds, known without building it.
PRESET_PIPELINES = {
    "tiny-sd": "StableDiffusionPipeline",
    "tiny-sdxl": "StableDiffusionXLPipeline",
    "tiny-flux": "FluxPipeline",
    "tiny-sd3": "StableDiffusion3Pipeline",
    "toyworld": "StableDiffusionPipeline",
}


def preset_identity(name: str, seed: int) -> str:
    """What names a preset's weights for caches: its seed, or a digest of the shipped weights (a new base
    installed under the same preset name must not reuse the old one's class images)."""
    folder = PRESET_WEIGHTS.get(name)
    if folder is None:
        return f"preset:{name}:build={TINY_BUILD}:seed={seed}"
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        digest.update(path.read_bytes())
    return f"preset:{name}:weights={digest.hexdigest()[:16]}"


def build_preset(name: str, seed: int = 0):
    try:
        builder = PRESETS[name]
    except KeyError:
        raise TunelabError(f"unknown preset {name!r}; built-in presets: {', '.join(sorted(PRESETS))}") from None
    pipeline = builder(seed=seed)
    # Built from config, the modules start in training mode (dropout on: the tiny T5 has 0.1); a loaded
    # model is in eval mode, and so is a preset, so sampling is deterministic. The trainer sets what trains.
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipeline
