"""Techniques: what is trainable, and how its artifact is saved and attached."""

from __future__ import annotations

import importlib

# Technique name -> "module:Class"; imported only when chosen, so the CLI starts fast.
METHODS = {
    "lora": "tunelab.methods.lora:LoraMethod",
    "dreambooth": "tunelab.methods.dreambooth:DreamBoothMethod",
    "textual_inversion": "tunelab.methods.textual_inversion:TextualInversionMethod",
    "hypernetwork": "tunelab.methods.hypernetwork:HypernetworkMethod",
}


def method_class(name: str):
    module_name, _, class_name = METHODS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
