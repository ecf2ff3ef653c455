"""The registry of techniques: the one list of them. A new technique is a module here and a line below."""

from __future__ import annotations

import importlib

from tunelab.methods.base import Method, require_family

# Technique name -> "module:Class"; a module is imported only when its technique is used, so the CLI starts fast.
# The order is the order generation attaches artifacts in (LoRAs before hypernetworks, as in A1111).
METHODS = {
    "lora": "tunelab.methods.lora:LoraMethod",
    "dreambooth": "tunelab.methods.dreambooth:DreamBoothMethod",
    "textual_inversion": "tunelab.methods.textual_inversion:TextualInversionMethod",
    "hypernetwork": "tunelab.methods.hypernetwork:HypernetworkMethod",
    "predicted_lora": "tunelab.methods.predicted_lora:PredictedLoraMethod",  # its LoRA files attach with LoRA's flag
}


def method_class(name: str) -> type[Method]:
    module_name, _, class_name = METHODS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def all_methods() -> list[type[Method]]:
    return [method_class(name) for name in METHODS]


def generation_methods() -> list[type[Method]]:
    """Techniques whose artifacts generation attaches to a base model (a DreamBooth model is the model itself)."""
    return [method for method in all_methods() if method.generate_flag is not None]


def check_family(method: type[Method], family_name: str, family_title: str) -> None:
    """Refuse a technique on a family it does not support, naming the ones that are."""
    there = [other.title for other in all_methods() if family_name in other.families]
    require_family(method, family_name, family_title, there)
