"""kohya's (sd-scripts) LoRA layout for MMDiT transformers: the original model's module names, with
fused projections. Flux.1 (formats/kohya_flux.py) and SD3 (formats/kohya_sd3.py) each give a table.

A fused module's LoRA holds its parts side by side: `down` is the parts' downs stacked
(sum r, in), `up` is block-diagonal (sum out, sum r), each part's alpha / r folded into its
block, and alpha = sum r (scale 1). Reading splits `up` by the parts' output widths, which come
from the weights themselves (q, k, v are as wide as the block's input; a last part marked as
taking the rest, Flux's single-block MLP, takes the rest), so any model of the family's shape reads
exactly; a part whose block is all zeros is dropped, and a block-diagonal `up` gives back the parts'
own ranks.

The variants: a fused LoHa splits exactly by rows of its `a` factors, and parts fuse with those
block-diagonal; a DoRA with per-output magnitudes splits and fuses with its magnitudes; a LoKr
splits only where the parts fall on its Kronecker blocks and never fuses (write it with PEFT's layout).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from tunelab.errors import TunelabError
from tunelab.formats.lora_set import AdapterModule, DoraModule, LohaModule, LoraModule, LoraSet, algorithm_title, split_component
from tunelab.formats.lycoris import module_to_parts
from tunelab.formats.module_paths import to_file_path

DENOISER = "transformer"


@dataclass(frozen=True)
class FusedLayout:
    """One family's kohya transformer names: kohya block list -> (diffusers block list, kohya module under
    a block -> the diffusers modules it fuses, in output order)."""

    title: str  # for messages: "Flux", "SD3"
    base_model_version: str  # kohya's ss_base_model_version of the family's files
    blocks: dict[str, tuple[str, dict[str, tuple[str, ...]]]]
    text_encoder_prefixes: dict[str, str]  # component -> kohya prefix it is written with
    read_text_prefixes: tuple[str, ...]  # kohya text-encoder prefixes read (with the trailing "_")
    rest_width_modules: frozenset[str] = frozenset()  # fused modules whose last part takes the rows left over
    rest_width_ratio: int = 1  # that part's width / the model's width, when writing a file without it
    # kohya modules whose output halves diffusers swaps where they are a final norm's (shift, scale) modulation
    swapped_halves: frozenset[str] = frozenset()
    top_modules: dict[str, str] = field(default_factory=dict)  # kohya module outside the blocks -> diffusers path
    diffusers_reads: bool = True  # diffusers' load_lora_weights converts this layout (0.42: Flux's, not SD3's)
    kohya_name: re.Pattern = field(init=False, compare=False)
    diffusers_path: re.Pattern = field(init=False, compare=False)

    def __post_init__(self):
        kohya_lists = "|".join(map(re.escape, self.blocks))
        diffusers_lists = "|".join(map(re.escape, (diffusers for diffusers, _ in self.blocks.values())))
        object.__setattr__(self, "kohya_name", re.compile(rf"lora_unet_({kohya_lists})_(\d+)_(\w+)$"))
        object.__setattr__(self, "diffusers_path", re.compile(rf"({diffusers_lists})\.(\d+)\.(.+)$"))

    def to_original_rows(self, name: str, module: AdapterModule) -> AdapterModule:
        """The module with its output rows as the original model orders them (the same as diffusers' unless
        `swapped_halves` says otherwise); swapping twice gives the module back."""
        if self._module_name(name) not in self.swapped_halves:
            return module
        out, width = module.delta_shape[0], module.delta_shape[1]
        if out != 2 * width:  # only the (shift, scale) modulation of a final norm is stored the other way round
            return module
        if not isinstance(module, LoraModule):
            raise TunelabError(f"{name}: a {algorithm_title(module.algorithm)} on a final norm's modulation cannot be "
                               "reordered; write this LoRA with --format peft")
        up = torch.cat(module.up.chunk(2, dim=0)[::-1])  # (2 width, r): (scale, shift) <-> (shift, scale)
        return LoraModule(module.down, up, module.alpha)

    def _module_name(self, name: str) -> str:
        """A kohya name without its prefix and block: `x_block_attn_qkv`, `final_layer_linear`."""
        match = self.kohya_name.match(name)
        return match.group(3) if match else name.removeprefix("lora_unet_")

    def matches(self, names) -> bool:
        return any(self.kohya_name.match(name) for name in names)

    def kohya_module(self, module_path: str) -> tuple[str, int] | None:
        """diffusers transformer path -> (kohya module name, index of the part in it)."""
        top = next((kohya for kohya, path in self.top_modules.items() if path == module_path), None)
        if top is not None:
            return f"lora_unet_{top}", 0
        match = self.diffusers_path.match(module_path)
        if match is None:
            return None
        block_list, index, inner = match.groups()
        kohya_blocks, table = next((kohya, table) for kohya, (diffusers, table) in self.blocks.items() if diffusers == block_list)
        for kohya, parts in table.items():
            if inner in parts:
                return f"lora_unet_{kohya_blocks}_{index}_{kohya}", parts.index(inner)
        return None

    def _part_widths(self, kohya: str, parts: tuple[str, ...], model_width: int) -> list[int]:
        if len(parts) == 1:
            return []
        if kohya in self.rest_width_modules:
            return [model_width] * (len(parts) - 1) + [self.rest_width_ratio * model_width]
        return [model_width] * len(parts)

    def to_tensors(self, lora: LoraSet) -> dict[str, torch.Tensor]:
        fused: dict[str, dict[int, AdapterModule]] = {}
        tensors: dict[str, torch.Tensor] = {}

        def put(name: str, module: AdapterModule) -> None:
            tensors.update({f"{name}.{part}": tensor for part, tensor in module_to_parts(module).items()})

        for key, module in lora.items():
            component, module_path = split_component(key)
            if component == DENOISER:
                located = self.kohya_module(module_path)
                if located is None:
                    raise TunelabError(f"no kohya {self.title} name for {key}; write this LoRA with --format peft")
                fused.setdefault(located[0], {})[located[1]] = self.to_original_rows(located[0], module)
            elif component in self.text_encoder_prefixes:
                put(f"{self.text_encoder_prefixes[component]}_{to_file_path(component, module_path).replace('.', '_')}", module)
            else:
                raise TunelabError(f"no kohya {self.title} name for {key} (kohya's {self.title} LoRAs hold the transformer "
                                   f"and {', '.join(self.text_encoder_prefixes)} only)")
        for name, parts in fused.items():
            put(name, self._fuse_any(name, parts))
        return tensors

    def _fuse_any(self, name: str, parts: dict[int, AdapterModule]) -> AdapterModule:
        kinds = {module.algorithm for module in parts.values()}
        if self._module_name(name) in self.top_modules:
            return parts[0]
        if kinds == {"lora"}:
            return self._fuse(name, parts)
        table = self.blocks[self.kohya_name.match(name).group(1)][1]
        all_parts = table[self.kohya_name.match(name).group(3)]
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
        inner = self._fuse(name, {index: module.inner for index, module in enumerate(ordered)})
        return DoraModule(inner, torch.cat([module.dora_scale.flatten() for module in ordered])[:, None])

    def _fuse(self, name: str, parts: dict[int, LoraModule]) -> LoraModule:
        table = self.blocks[self.kohya_name.match(name).group(1)][1]
        kohya = self.kohya_name.match(name).group(3)
        all_parts = table[kohya]
        if len(all_parts) == 1:
            return parts[0]
        first = next(iter(parts.values()))
        widths = self._part_widths(kohya, all_parts, first.down.shape[1])
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

    def from_tensors(self, modules: dict[str, AdapterModule], resolve_text_encoder) -> LoraSet:
        """The LoraSet of a kohya file's modules (name -> adapter). `resolve_text_encoder(name)` maps a
        text-encoder kohya name (lora_te1_...) to its "text_encoder.<path>" key."""
        lora: LoraSet = {}
        unknown = []
        for name, module in modules.items():
            match = self.kohya_name.match(name)
            if match is None and self._module_name(name) in self.top_modules:
                lora[f"{DENOISER}.{self.top_modules[self._module_name(name)]}"] = self.to_original_rows(name, module)
                continue
            if match is None:
                key = resolve_text_encoder(name) if name.startswith(self.read_text_prefixes) else None
                if key is None:
                    unknown.append(name)
                else:
                    lora[key] = module
                continue
            kohya_blocks, index, kohya = match.groups()
            diffusers_blocks, table = self.blocks[kohya_blocks]
            if kohya not in table:
                unknown.append(name)
                continue
            parts = table[kohya]
            module = self.to_original_rows(name, module)  # its own inverse
            for part, part_module in zip(parts, self._split(name, module, parts, kohya)):
                if part_module is not None:
                    lora[f"{DENOISER}.{diffusers_blocks}.{index}.{part}"] = part_module
        if unknown:
            raise TunelabError(f"{len(unknown)} LoRA modules have no place in a {self.title} transformer: {', '.join(unknown[:5])}")
        return lora

    def _split(self, name: str, module: AdapterModule, parts: tuple[str, ...], kohya: str) -> list[AdapterModule | None]:
        """A fused module's parts (None for a LoRA part it leaves untouched)."""
        out, model_width = module.delta_shape[0], module.delta_shape[1]
        if isinstance(module, LoraModule):
            return [_trimmed(LoraModule(module.down, part_up, module.alpha))
                    for part_up in self._split_up(name, module.up, parts, kohya, model_width)]
        if len(parts) == 1:
            return [module]
        widths = self._row_widths(name, out, parts, kohya, model_width)
        starts = [sum(widths[:index]) for index in range(len(widths))]
        try:
            return [module.rows(start, start + width) for start, width in zip(starts, widths)]
        except TunelabError as error:
            raise TunelabError(f"{name}: {error}") from None

    def _row_widths(self, name: str, out: int, parts: tuple[str, ...], kohya: str, model_width: int) -> list[int]:
        widths = [model_width] * (len(parts) - 1)
        widths.append(out - sum(widths) if kohya in self.rest_width_modules else model_width)
        if sum(widths) != out or widths[-1] <= 0:
            raise TunelabError(f"{name}: its {out} output rows do not split into {', '.join(parts)}")
        return widths

    def _split_up(self, name: str, up: torch.Tensor, parts: tuple[str, ...], kohya: str, model_width: int) -> list[torch.Tensor]:
        if len(parts) == 1:
            return [up]
        return list(torch.split(up, self._row_widths(name, up.shape[0], parts, kohya, model_width), dim=0))


def _trimmed(module: LoraModule) -> LoraModule | None:
    """Keep only the rank columns this part uses (block-diagonal fused files); None if it uses none."""
    used = module.up.flatten(1).abs().sum(dim=0) > 0  # (r,)
    if not bool(used.any()):
        return None
    if bool(used.all()):
        return LoraModule(module.down.contiguous(), module.up.contiguous(), module.alpha)
    rank = int(used.sum())
    return LoraModule(module.down[used].contiguous(), module.up[:, used].contiguous(), module.scale * rank)

