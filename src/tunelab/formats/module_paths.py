"""Module paths as files spell them.

transformers 5 dropped the `text_model.` level of CLIPTextModel, but LoRA files in
the wild (kohya's `lora_te_text_model_encoder_...`, diffusers' `text_encoder.text_model...`)
keep it, and A1111/ComfyUI expect it. Files carry it; live models may not.
"""

from __future__ import annotations

TEXT_MODEL_LEVEL = "text_model."


def _is_text_encoder(component: str) -> bool:
    return component.startswith("text_encoder")


def to_file_path(component: str, module_path: str) -> str:
    if _is_text_encoder(component) and not module_path.startswith(TEXT_MODEL_LEVEL):
        return TEXT_MODEL_LEVEL + module_path
    return module_path


def from_file_path(component: str, module_path: str) -> str:
    if _is_text_encoder(component):
        return module_path.removeprefix(TEXT_MODEL_LEVEL)
    return module_path
