"""Tiny randomly initialised CLIP, DINOv2 and DINO ViT models, saved with their processors as a user's folders would be."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (BitImageProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, Dinov2Config,
                          Dinov2Model, ViTConfig, ViTImageProcessor, ViTModel)

from tunelab.models.tokenizer import build_clip_tokenizer

SIDE = 32  # input pixels
LAYERS = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    tokenizer = build_clip_tokenizer()
    text = {**LAYERS, "vocab_size": len(tokenizer), "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config={**LAYERS, "image_size": SIDE, "patch_size": 8}, projection_dim=16))
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_tiny_dinov2(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=SIDE,
                             patch_size=8)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE}).save_pretrained(folder)
    return folder


def save_tiny_dino_vit(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    ViTModel(ViTConfig(**LAYERS, image_size=SIDE, patch_size=8), add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": SIDE, "width": SIDE}).save_pretrained(folder)
    return folder
