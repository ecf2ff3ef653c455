"""SDXL: two CLIP text encoders (penultimate hidden states side by side, the second's pooled
projection), size and crop conditioning (`time_ids`), DDPM noising with epsilon or v targets.

Everything about noise, targets and loss weights is Stable Diffusion's; only the conditioning differs.
"""

from __future__ import annotations

import torch

from tunelab.models.family import NoisyBatch, tokenize
from tunelab.models.sd import StableDiffusionFamily

CLIP_TARGETS = StableDiffusionFamily.lora_targets["text_encoder"]


class StableDiffusionXLFamily(StableDiffusionFamily):
    name = "sdxl"
    title = "SDXL"
    text_encoder_names = ("text_encoder", "text_encoder_2")
    lora_targets = {**StableDiffusionFamily.lora_targets, "text_encoder_2": CLIP_TARGETS}
    base_model_version = "sdxl_base_v1-0"

    def empty_negative_is_zeros(self) -> bool:
        """SDXL base's pipeline config says `force_zeros_for_empty_prompt`: with no negative prompt, diffusers
        conditions the unconditional pass on zero embeddings and a zero pooled vector."""
        return bool(self.pipeline.config.get("force_zeros_for_empty_prompt", False))

    def encode_text(self, name: str, ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """SDXL takes each encoder's penultimate hidden states (B, 77, D); the pooled vector (B, P) is the
        second encoder's projected end-of-text embedding (None for the first)."""
        output = self._forward_module(name)(ids, attention_mask=attention_mask, output_hidden_states=True)
        return output.hidden_states[-2], getattr(output, "text_embeds", None)

    def encode_prompts(self, captions: list[str]) -> dict[str, torch.Tensor]:
        hidden_states, pooled = [], None
        for name in self.text_encoder_names:
            ids = tokenize(self.tokenizer_for(name), captions).to(self.module(name).device)  # (B, 77)
            hidden, pooled_output = self.encode_text(name, ids)
            hidden_states.append(hidden)
            pooled = pooled_output if pooled_output is not None else pooled
        return {"encoder_hidden_states": torch.cat(hidden_states, dim=-1), "text_embeds": pooled}  # (B, 77, D1 + D2), (B, P)

    def time_ids(self, latents: torch.Tensor) -> torch.Tensor:
        """SDXL's size conditioning: (original height, width, crop top, left, target height, width) per sample.

        Training images are resized and cropped to the training size before they get here, so the
        original and target sizes are that size and the crop is (0, 0): what diffusers' pipeline
        passes at generation time for an image of that size.
        """
        height, width = (side * self.pipeline.vae_scale_factor for side in latents.shape[-2:])
        ids = torch.tensor([height, width, 0, 0, height, width], device=latents.device, dtype=latents.dtype)
        return ids.expand(latents.shape[0], 6)  # (B, 6)

    def predict(self, batch: NoisyBatch, conditioning: dict[str, torch.Tensor]) -> torch.Tensor:
        unet = self._forward_module("unet")
        dtype = self.pipeline.unet.dtype  # frozen denoisers run outside autocast in their own dtype
        added = {"text_embeds": conditioning["text_embeds"].to(dtype), "time_ids": self.time_ids(batch.noisy).to(dtype)}
        hidden = conditioning["encoder_hidden_states"].to(dtype)
        return unet(batch.noisy, batch.timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added, return_dict=False)[0]
