"""Flux.1 LoRAs in kohya's (sd-scripts) layout: BFL's module names, with fused projections.

    lora_unet_double_blocks_{i}_img_attn_qkv     <- transformer_blocks.{i}.attn.to_q | to_k | to_v
    lora_unet_single_blocks_{i}_linear1          <- single_transformer_blocks.{i}.attn.to_q | to_k | to_v | proj_mlp
    lora_te1_text_model_...                      <- the CLIP-L text encoder

A fused module's LoRA holds its parts side by side: `down` is the parts' downs stacked
(sum r, in), `up` is block-diagonal (sum out, sum r), each part's alpha / r folded into its
block, and alpha = sum r (scale 1). Reading splits `up` by the parts' output widths, which come
from the weights themselves (q, k, v are as wide as the block's input; the MLP takes the rest),
so any Flux-shaped model reads exactly; a part whose block is all zeros is dropped, and a
block-diagonal `up` gives back the parts' own ranks. diffusers' reader does the same splitting
but for Flux.1's widths only (3072 / 12288).

The variants: a fused LoHa splits exactly by rows of its `a` factors, and parts fuse with those
block-diagonal; a DoRA with per-output magnitudes splits and fuses with its magnitudes; a LoKr
splits only where the parts fall on its Kronecker blocks and never fuses (write it with PEFT's layout).
"""

from __future__ import annotations

import re

import torch

from tunelab.errors import TunelabError
from tunelab.formats.lora_set import AdapterModule, DoraModule, LohaModule, LoraModule, LoraSet, algorithm_title, split_component
from tunelab.formats.lycoris import module_to_parts
from tunelab.formats.module_paths import to_file_path

DENOISER = "transformer"
TEXT_ENCODER_PREFIX = "lora_te1"  # kohya's Flux LoRAs call CLIP-L te1 (T5 would be te3)

# kohya module (under a block) -> the diffusers modules it fuses, in output order.
DOUBLE_BLOCK = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_proj": ("attn.to_out.0",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "txt_mod_lin": ("norm1_context.linear",),
}
SINGLE_BLOCK = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation_lin": ("norm.linear",),
}
BLOCKS = {"double_blocks": ("transformer_blocks", DOUBLE_BLOCK), "single_blocks": ("single_transformer_blocks", SINGLE_BLOCK)}
FLUX_MLP_RATIO = 4  # Flux.1's MLP hidden width / model width (for a linear1 missing its MLP part)

_KOHYA_NAME = re.compile(r"lora_unet_(double_blocks|single_blocks)_(\d+)_(\w+)$")
_DIFFUSERS_PATH = re.compile(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")


def is_kohya_flux(names) -> bool:
    return any(_KOHYA_NAME.match(name) for name in names)


def _kohya_module(module_path: str) -> tuple[str, int] | None:
    """diffusers transformer path -> (kohya module name, index of the part in it)."""
    match = _DIFFUSERS_PATH.match(module_path)
    if match is None:
        return None
    block_list, index, inner = match.groups()
    kohya_blocks, table = next((kohya, table) for kohya, (diffusers, table) in BLOCKS.items() if diffusers == block_list)
    for kohya, parts in table.items():
        if inner in parts:
            return f"lora_unet_{kohya_blocks}_{index}_{kohya}", parts.index(inner)
    return None


def _part_widths(kohya: str, parts: tuple[str, ...], model_width: int) -> list[int]:
    if len(parts) == 1:
        return []
    if kohya.endswith("linear1"):
        return [model_width] * 3 + [FLUX_MLP_RATIO * model_width]
    return [model_width] * len(parts)


def to_kohya_flux_tensors(lora: LoraSet) -> dict[str, torch.Tensor]:
    fused: dict[str, dict[int, AdapterModule]] = {}
    tensors: dict[str, torch.Tensor] = {}

    def put(name: str, module: AdapterModule) -> None:
        tensors.update({f"{name}.{part}": tensor for part, tensor in module_to_parts(module).items()})

    for key, module in lora.items():
        component, module_path = split_component(key)
        if component == DENOISER:
            located = _kohya_module(module_path)
            if located is None:
                raise TunelabError(f"no kohya Flux name for {key}; write this LoRA with --format peft")
            fused.setdefault(located[0], {})[located[1]] = module
        elif component == "text_encoder":
            put(f"{TEXT_ENCODER_PREFIX}_{to_file_path(component, module_path).replace('.', '_')}", module)
        else:
            raise TunelabError(f"no kohya Flux name for {key} (kohya's Flux LoRAs hold the transformer and CLIP-L only)")
    for name, parts in fused.items():
        put(name, _fuse_any(name, parts))
    return tensors


def _fuse_any(name: str, parts: dict[int, AdapterModule]) -> AdapterModule:
    kinds = {module.algorithm for module in parts.values()}
    if kinds == {"lora"}:
        return _fuse(name, parts)
    table = BLOCKS[_KOHYA_NAME.match(name).group(1)][1]
    all_parts = table[_KOHYA_NAME.match(name).group(3)]
    if len(all_parts) == 1:
        return parts[0]
    title = " and ".join(sorted(algorithm_title(kind) for kind in kinds))
    if len(kinds) > 1 or len(parts) < len(all_parts) or kinds - {"loha", "dora"}:
        raise TunelabError(
            f"{name} fuses {', '.join(all_parts)} into one module, which {title} adapters on "
            f"{len(parts)} of them cannot be written as; write this LoRA with --format peft"
        )
    ordered = [parts[index] for index in range(len(all_parts))]
    if kinds == {"loha"}:
        return LohaModule.stacked(ordered)
    if not all(module.on_output_axis for module in ordered):
        raise TunelabError(f"{name}: a DoRA with per-input magnitudes cannot be fused; write this LoRA with --format peft")
    inner = _fuse(name, {index: module.inner for index, module in enumerate(ordered)})
    return DoraModule(inner, torch.cat([module.dora_scale.flatten() for module in ordered])[:, None])


def _fuse(name: str, parts: dict[int, LoraModule]) -> LoraModule:
    table = BLOCKS[_KOHYA_NAME.match(name).group(1)][1]
    kohya = _KOHYA_NAME.match(name).group(3)
    all_parts = table[kohya]
    if len(all_parts) == 1:
        return parts[0]
    first = next(iter(parts.values()))
    widths = _part_widths(kohya, all_parts, first.down.shape[1])
    dtype = first.down.dtype
    downs, columns = [], []
    for index, width in enumerate(widths):
        module = parts.get(index)
        if module is not None:
            downs.append(module.down.float())  # (r_i, in)
            columns.append((index, module.up.float() * module.scale))  # (out_i, r_i), its alpha / r folded in
    rank = sum(down.shape[0] for down in downs)
    up = torch.zeros(sum(widths), rank)  # (sum out, sum r), block-diagonal
    offsets = [sum(widths[:index]) for index in range(len(widths))]
    column = 0
    for index, part_up in columns:
        if part_up.shape[0] != widths[index]:
            raise TunelabError(f"{name}: part {all_parts[index]} is {part_up.shape[0]} wide, expected {widths[index]}")
        up[offsets[index] : offsets[index] + widths[index], column : column + part_up.shape[1]] = part_up
        column += part_up.shape[1]
    return LoraModule(torch.cat(downs).to(dtype), up.to(dtype), float(rank))


def from_kohya_flux_tensors(modules: dict[str, AdapterModule], resolve_text_encoder) -> LoraSet:
    """The LoraSet of a kohya Flux file's modules (name -> adapter). `resolve_text_encoder(name)` maps a
    CLIP-L kohya name (lora_te_/lora_te1_) to its "text_encoder.<path>" key."""
    lora: LoraSet = {}
    unknown = []
    for name, module in modules.items():
        match = _KOHYA_NAME.match(name)
        if match is None:
            key = resolve_text_encoder(name) if name.startswith(("lora_te_", "lora_te1_")) else None
            if key is None:
                unknown.append(name)
            else:
                lora[key] = module
            continue
        kohya_blocks, index, kohya = match.groups()
        diffusers_blocks, table = BLOCKS[kohya_blocks]
        if kohya not in table:
            unknown.append(name)
            continue
        parts = table[kohya]
        for part, part_module in zip(parts, _split(name, module, parts, kohya)):
            if part_module is not None:
                lora[f"{DENOISER}.{diffusers_blocks}.{index}.{part}"] = part_module
    if unknown:
        raise TunelabError(f"{len(unknown)} LoRA modules have no place in a Flux transformer: {', '.join(unknown[:5])}")
    return lora


def _split(name: str, module: AdapterModule, parts: tuple[str, ...], kohya: str) -> list[AdapterModule | None]:
    """A fused module's parts (None for a LoRA part it leaves untouched)."""
    out, model_width = module.delta_shape[0], module.delta_shape[1]
    if isinstance(module, LoraModule):
        return [_trimmed(LoraModule(module.down, part_up, module.alpha))
                for part_up in _split_up(name, module.up, parts, kohya, model_width)]
    if len(parts) == 1:
        return [module]
    widths = _row_widths(name, out, parts, kohya, model_width)
    starts = [sum(widths[:index]) for index in range(len(widths))]
    try:
        return [module.rows(start, start + width) for start, width in zip(starts, widths)]
    except TunelabError as error:
        raise TunelabError(f"{name}: {error}") from None


def _row_widths(name: str, out: int, parts: tuple[str, ...], kohya: str, model_width: int) -> list[int]:
    widths = [model_width] * (len(parts) - 1)
    widths.append(out - sum(widths) if kohya == "linear1" else model_width)
    if sum(widths) != out or widths[-1] <= 0:
        raise TunelabError(f"{name}: its {out} output rows do not split into {', '.join(parts)}")
    return widths


def _split_up(name: str, up: torch.Tensor, parts: tuple[str, ...], kohya: str, model_width: int) -> list[torch.Tensor]:
    if len(parts) == 1:
        return [up]
    return list(torch.split(up, _row_widths(name, up.shape[0], parts, kohya, model_width), dim=0))


def _trimmed(module: LoraModule) -> LoraModule | None:
    """Keep only the rank columns this part uses (block-diagonal fused files); None if it uses none."""
    used = module.up.flatten(1).abs().sum(dim=0) > 0  # (r,)
    if not bool(used.any()):
        return None
    if bool(used.all()):
        return LoraModule(module.down.contiguous(), module.up.contiguous(), module.alpha)
    rank = int(used.sum())
    return LoraModule(module.down[used].contiguous(), module.up[:, used].contiguous(), module.scale * rank)

