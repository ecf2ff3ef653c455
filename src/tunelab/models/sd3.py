"""Stable Diffusion 3 and 3.5 (Medium, Large, Large Turbo): an MMDiT on 2x2 latent patches, three text encoders.

Prompts: CLIP-L's and CLIP-G's penultimate hidden states side by side (B, 77, 768 + 1280), zero-padded
to T5's width and followed by T5-XXL's sequence (B, 77 + L, 4096); the pooled vector is both CLIPs'
projected end-of-text embeddings side by side (B, 2048). T5 is always frozen (each distinct caption goes
through it once); with --no-t5 it is not used at all and its sequence is zeros, as SD3 allows.

Training objective: flow matching (models/flow_matching.py) with sigma shifted by --flow-shift (default 3.0,
SD3's). `--weighting-scheme` takes diffusers' names and means what diffusers' SD3 scripts mean:
`logit_normal` (default, SD3's) and `mode` draw sigma from that density with unit loss weights; `none`,
`sigma_sqrt` and `cosmap` draw it uniformly and weight the loss. tunelab draws sigma continuously (diffusers'
script rounds it to the scheduler's 1000-step grid).

SD3.5 Medium's MMDiT-X (dual-attention layers `attn2`, QK RMS-norm) is the same family: its config says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from tunelab.config import option
from tunelab.errors import TunelabError
from tunelab.models.family import Generators, NoisyBatch, VaeLatentsMixin, draw, options_of, tokenize
from tunelab.models.flow_matching import TIMESTEP_SCALE, CaptionCache, FlowMatchingNoise, FlowMatchingOptions
from tunelab.models.sd import StableDiffusionFamily

WeightingScheme = Literal["logit_normal", "mode", "none", "sigma_sqrt", "cosmap"]
SD3_SHIFT = 3.0  # the shift SD3's scheduler samples with
# diffusers' SD3 pipeline reads 256 T5 tokens by default; a smaller tokenizer (the tiny preset) caps it.
DEFAULT_T5_TOKENS = 256
CLIP_TARGETS = StableDiffusionFamily.lora_targets["text_encoder"]


@dataclass
class StableDiffusion3Options:
    """`tunelab train` options only SD3 reads; a field at its default was not given (None: the defaults below apply)."""

    scope: ClassVar[str] = "SD3 models"

    weighting_scheme: WeightingScheme | None = option(
        "SD3: how sigma is drawn and the loss weighted, as diffusers names it: logit_normal (default), mode, "
        "none, sigma_sqrt, cosmap", default=None,
    )
    logit_mean: float | None = option("SD3, --weighting-scheme logit_normal: mean of the normal (default 0.0)", default=None)
    logit_std: float | None = option("SD3, --weighting-scheme logit_normal: its standard deviation (default 1.0)", default=None)
    mode_scale: float | None = option("SD3, --weighting-scheme mode: its scale (default 1.29)", default=None)
    t5: bool = option("SD3: --no-t5 trains without T5-XXL (a zero sequence in its place; less memory)", default=True)
    t5_max_length: int | None = option(f"SD3: T5 tokens per caption (default {DEFAULT_T5_TOKENS})", default=None)

    def __post_init__(self):
        # Checked where the options are made, so a bad value is refused before any model loads.
        scheme = self.weighting_scheme or "logit_normal"
        if (self.logit_mean is not None or self.logit_std is not None) and scheme != "logit_normal":
            raise TunelabError(f"--logit-mean and --logit-std apply to --weighting-scheme logit_normal, not {scheme}")
        if self.mode_scale is not None and scheme != "mode":
            raise TunelabError(f"--mode-scale applies to --weighting-scheme mode, not {scheme}")
        if self.logit_std is not None and self.logit_std <= 0:
            raise TunelabError(f"--logit-std must be positive, got {self.logit_std}")
        if self.t5_max_length is not None and self.t5_max_length < 1:
            raise TunelabError(f"--t5-max-length must be at least 1, got {self.t5_max_length}")
        if self.t5_max_length is not None and self.t5 is False:
            raise TunelabError("--t5-max-length sets T5's tokens; with --no-t5 there is no T5")


class StableDiffusion3Family(FlowMatchingNoise, VaeLatentsMixin):
    name = "sd3"
    title = "SD3"
    train_options = (FlowMatchingOptions, StableDiffusion3Options)
    unread_options = {
        "timestep_sampling": "SD3 draws sigma by --weighting-scheme: logit_normal is sigmoid, none is uniform",
        "flux_guidance": "SD3 has no guidance embedding; it samples with classifier-free guidance",
    }
    denoiser_name = "transformer"
    trainable_text_encoder_names = ("text_encoder", "text_encoder_2")  # CLIP-L and CLIP-G; T5 stays frozen
    optional_text_encoder = "text_encoder_3"
    base_model_version = "sd3"  # kohya's ss_base_model_version
    prompt_weighting = False  # generation hands the prompt text to StableDiffusion3Pipeline as written
    negative_prompt = True
    lora_targets = {
        "transformer": {
            "attention": ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
            "feedforward": ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
        },
        "text_encoder": CLIP_TARGETS,
        "text_encoder_2": CLIP_TARGETS,
    }

    def __init__(self, pipeline, options=None, family_options=None):
        self.pipeline = pipeline
        if options is not None:
            self.check_options(options)
        flow = options_of(family_options, FlowMatchingOptions)
        own = options_of(family_options, StableDiffusion3Options)
        self.flow_shift = flow.flow_shift if flow.flow_shift is not None else SD3_SHIFT
        self.weighting_scheme = own.weighting_scheme or "logit_normal"
        self.logit_mean = own.logit_mean if own.logit_mean is not None else 0.0
        self.logit_std = own.logit_std if own.logit_std is not None else 1.0
        self.mode_scale = own.mode_scale if own.mode_scale is not None else 1.29
        self.t5_max_length = own.t5_max_length or DEFAULT_T5_TOKENS
        if own.t5 is False and pipeline.text_encoder_3 is not None:
            self.drop_text_encoder("text_encoder_3")
        self._t5 = CaptionCache(self._encode_t5)

    @staticmethod
    def check_options(options) -> None:
        """TrainOptions that make no sense here, refused before the model loads."""
        if options.min_snr_gamma:
            raise TunelabError("--min-snr-gamma weights DDPM timesteps (SD, SDXL); SD3 is trained with flow matching "
                               "(its loss weighting: --weighting-scheme)")

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        """CLIP-L, CLIP-G and T5 (not T5 where the model runs without it)."""
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        return tuple(name for name in names if getattr(self.pipeline, name, None) is not None)

    @property
    def native_resolution(self) -> int:
        return self.pipeline.default_sample_size * self.pipeline.vae_scale_factor

    @property
    def max_sequence_length(self) -> int:
        if self.pipeline.tokenizer_3 is None:
            return self.t5_max_length
        return min(self.t5_max_length, self.pipeline.tokenizer_3.model_max_length)

    def pipeline_text_options(self) -> dict[str, int]:
        return {"max_sequence_length": self.max_sequence_length}  # the pipeline's own default is not the run's

    def enable_gradient_checkpointing(self) -> None:
        self.pipeline.transformer.enable_gradient_checkpointing()
        for name in self.trainable_text_encoder_names:
            self.module(name).gradient_checkpointing_enable()

    def encode_text(self, name: str, ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """CLIP: (penultimate hidden states (B, 77, D), projected pooled vector (B, P)); T5: (hidden states (B, L, D), None)."""
        if name == "text_encoder_3":
            return self._forward_module(name)(ids, attention_mask=attention_mask)[0], None
        output = self._forward_module(name)(ids, attention_mask=attention_mask, output_hidden_states=True)
        return output.hidden_states[-2], output.text_embeds

    def encode_prompts(self, captions: list[str]) -> dict[str, torch.Tensor]:
        hidden, pooled = [], []
        for name in ("text_encoder", "text_encoder_2"):  # CLIP-L, CLIP-G: may carry a LoRA
            ids = tokenize(self.tokenizer_for(name), captions).to(self.module(name).device)  # (B, 77)
            states, projected = self.encode_text(name, ids)
            hidden.append(states)
            pooled.append(projected)
        sequence = self._t5.encode(captions).to(hidden[0])  # (B, L, D_t5)
        clip = torch.cat(hidden, dim=-1)  # (B, 77, D_l + D_g)
        clip = torch.nn.functional.pad(clip, (0, sequence.shape[-1] - clip.shape[-1]))  # (B, 77, D_t5)
        return {"encoder_hidden_states": torch.cat([clip, sequence], dim=-2), "pooled_projections": torch.cat(pooled, dim=-1)}

    def encode_plain_text(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt as StableDiffusion3Pipeline encodes it: (joint sequence (1, 77 + L, D), pooled vector (1, P))."""
        pipeline = self.pipeline
        embeds, _, pooled, _ = pipeline.encode_prompt(prompt=text, prompt_2=None, prompt_3=None, device=pipeline._execution_device,
                                                      do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
        return embeds, pooled

    def _encode_t5(self, captions: list[str]) -> torch.Tensor:
        if self.pipeline.text_encoder_3 is None:  # --no-t5: zeros in its place, as StableDiffusion3Pipeline does
            width = self.pipeline.transformer.config.joint_attention_dim
            return torch.zeros(len(captions), self.max_sequence_length, width, device=self.pipeline.text_encoder.device)
        ids = tokenize(self.pipeline.tokenizer_3, captions, self.max_sequence_length).to(self.pipeline.text_encoder_3.device)
        return self.encode_text("text_encoder_3", ids)[0]  # (b, L, D)

    def draw_sigmas(self, latents: torch.Tensor, generator: Generators) -> torch.Tensor:
        """Unshifted sigma per sample (B,), from diffusers' density for the weighting scheme."""
        def density(one, count):
            return compute_density_for_timestep_sampling(self.weighting_scheme, count, self.logit_mean, self.logit_std,
                                                         self.mode_scale, generator=one)
        return draw(generator, latents.shape[0], density)

    def shift_for(self, latents: torch.Tensor) -> float:
        return self.flow_shift

    def predict(self, batch: NoisyBatch, conditioning: dict[str, torch.Tensor]) -> torch.Tensor:
        transformer = self._forward_module("transformer")
        dtype = self.pipeline.transformer.dtype  # frozen denoisers run outside autocast in their own dtype
        return transformer(
            hidden_states=batch.noisy.to(dtype),  # (B, C, h, w)
            timestep=batch.timesteps,  # (B,) 1000 * sigma, as the pipeline passes it
            encoder_hidden_states=conditioning["encoder_hidden_states"].to(dtype),  # (B, 77 + L, D_t5)
            pooled_projections=conditioning["pooled_projections"].to(dtype),  # (B, P_l + P_g)
            return_dict=False,
        )[0]  # (B, C, h, w)

    def loss_weights(self, timesteps: torch.Tensor, min_snr_gamma: float | None) -> torch.Tensor:
        """diffusers' SD3 loss weighting of the scheme (ones for logit_normal, mode and none)."""
        return compute_loss_weighting_for_sd3(self.weighting_scheme, timesteps / TIMESTEP_SCALE).to(timesteps.device)
