"""The trainer's speed and memory options, applied to whatever family and technique is trained.

Each is a TrainOptions field; each keeps the training result the same within numerical
tolerance (tests/train/test_speed_options.py). What they touch is generic: the family's
denoiser (a diffusers model), PEFT's LoRA layers wherever they are, and PyTorch's
attention-kernel choice.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from functools import partial

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from tunelab.errors import TunelabError
from tunelab.training.options import TrainOptions

# torch.compile's backend; tests may swap in a cheaper one.
COMPILE_BACKEND = "inductor"


def attention_backends(choice: str, device: torch.device):
    """The scaled-dot-product-attention kernels to allow, or None for PyTorch's own choice.

    `auto` on CUDA allows flash, memory-efficient and math but not cuDNN: with torch 2.11/cu130 the
    cuDNN kernel's backward failed on Flux's shapes, and PyTorch prefers cuDNN on Hopper when allowed.
    """
    named = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    if choice == "auto":
        if device.type != "cuda":
            return None
        return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if choice in ("efficient", "cudnn") and device.type != "cuda":
        raise TunelabError(f"--attention-backend {choice} needs a CUDA GPU; on this machine use auto, flash or math")
    return [named[choice]]


def attention_context(choice: str, device: torch.device):
    """A factory of context managers that restrict attention to the chosen kernels (forward and backward)."""
    backends = attention_backends(choice, device)
    if backends is None:
        return nullcontext

    return partial(sdpa_kernel, backends)


def _selective_policy(_ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in _saved_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def _saved_ops() -> set:
    aten = torch.ops.aten
    names = ("mm", "addmm", "bmm", "baddbmm", "convolution", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_flash_attention_for_cpu")
    return {getattr(aten, name).default for name in names if hasattr(aten, name)}


def selective_checkpoint(module, *args):
    """Checkpoint a block but keep the outputs of its matmuls, convolutions and attention: only the cheap
    element-wise and normalisation ops are recomputed in the backward pass."""
    context = partial(create_selective_checkpoint_contexts, _selective_policy)
    return checkpoint(module.__call__, *args, use_reentrant=False, context_fn=context)


def compile_denoiser(denoiser: torch.nn.Module, mode: str) -> None:
    """torch.compile in place: `regional` compiles each repeated block (one compilation serves every copy,
    so warm-up is short), `full` the whole denoiser."""
    if mode == "none":
        return
    if mode == "regional":
        blocks = set(getattr(denoiser, "_repeated_blocks", None) or ())
        found = [m for m in denoiser.modules() if type(m).__name__ in blocks]
        if not found:
            raise TunelabError(f"--compile regional: {type(denoiser).__name__} names no repeated blocks; use --compile full")
        for block in found:
            block.compile(backend=COMPILE_BACKEND)
    else:
        denoiser.compile(backend=COMPILE_BACKEND)


def offloaded_encoders(options: TrainOptions, family) -> list[torch.nn.Module]:
    """The frozen modules besides the denoiser (VAE, text encoders) that --offload-encoders keeps on the CPU."""
    if not options.offload_encoders:
        return []
    if not (options.cache_latents and options.cache_text_embeddings):
        raise TunelabError("--offload-encoders needs --cache-latents and --cache-text-embeddings "
                           "(the encoders come to the GPU only to fill those caches)")
    return [module for name, module in family.frozen_modules().items() if name != family.denoiser_name]


@contextmanager
def modules_on(modules: list[torch.nn.Module], device: torch.device):
    """Bring offloaded modules to `device` for the block, and back to the CPU after it."""
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module in modules:
            module.to("cpu")


def apply_speed_options(options: TrainOptions, family, trainable: dict[str, torch.nn.Module]) -> None:
    """After the technique's setup, before the optimizer: the options that change modules."""
    denoiser = family.module(family.denoiser_name)
    trained_encoders = [name for name in family.text_encoder_names if name in trainable]
    if options.cache_text_embeddings and trained_encoders:
        raise TunelabError(
            f"--cache-text-embeddings needs frozen text encoders, but this run trains {', '.join(trained_encoders)} "
            "(use --no-cache-text-embeddings)"
        )
    if options.gradient_checkpointing:
        family.enable_gradient_checkpointing()
        if options.gradient_checkpointing_mode == "selective":
            if not hasattr(denoiser, "enable_gradient_checkpointing"):
                raise TunelabError(f"--gradient-checkpointing-mode selective: {type(denoiser).__name__} does not support it")
            denoiser.enable_gradient_checkpointing(selective_checkpoint)
    # PEFT casts a LoRA layer's input to the LoRA weights' dtype (fp32) and autocast casts it straight
    # back for the matmul: a full-size copy each way per layer for the same result.
    for module in {id(m): m for m in [denoiser, *trainable.values()]}.values():
        for layer in module.modules():
            if hasattr(layer, "cast_input_dtype_enabled"):
                layer.cast_input_dtype_enabled = options.lora_fp32_inputs
    if options.channels_last:
        denoiser.to(memory_format=torch.channels_last)  # 4-d (convolution) weights only; inputs follow them
    compile_denoiser(denoiser, options.compile)
