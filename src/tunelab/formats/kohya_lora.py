"""kohya-ss LoRA files: `lora_unet_<path>.lora_down.weight`, `.lora_up.weight`, `.alpha`, `ss_*` metadata.

These are what A1111, ComfyUI, Forge and diffusers' `load_lora_weights` read. SD 1.x/2.x files
use diffusers' block names (`lora_unet_down_blocks_0_...`); SDXL files the original SGM ones
(`lora_unet_input_blocks_4_1_...`, text encoders `lora_te1_` / `lora_te2_`), both read and SGM
written for SDXL; Flux and SD3 files are kohya's layouts for their transformers (formats/kohya_flux.py,
formats/kohya_sd3.py), told apart by the base model version (written) or the block names (read).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable

import torch

from tunelab.errors import TunelabError
from tunelab.formats.kohya_flux import FLUX
from tunelab.formats.kohya_fused import DENOISER
from tunelab.formats.kohya_sd3 import SD3
from tunelab.formats.lora_set import AdapterModule, LoraSet, algorithms, split_component
from tunelab.formats.lycoris import is_module_part, module_from_parts, module_to_parts
from tunelab.formats.module_paths import from_file_path, to_file_path
from tunelab.formats.safetensors_io import save_tensors
from tunelab.models.original_layout import original_module_path, unet_module_map
from tunelab.models.single_file import CONFIGS_DIR

# Component -> kohya key prefix. Two text encoders (SDXL) are te1/te2; one is plain te.
_DENOISER_PREFIXES = {"unet": "lora_unet", "transformer": "lora_unet"}


def _text_encoder_prefixes(components: set[str]) -> dict[str, str]:
    if "text_encoder_3" in components:  # SD3: kohya calls T5 te3 (a LoRA tunelab never trains)
        return {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2", "text_encoder_3": "lora_te3"}
    if "text_encoder_2" in components:
        return {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
    return {"text_encoder": "lora_te"}


def kohya_prefixes(components: Iterable[str]) -> dict[str, str]:
    components = set(components)
    return {**_DENOISER_PREFIXES, **_text_encoder_prefixes(components)}


def kohya_name(key: str, prefixes: dict[str, str], sgm: bool = False) -> str:
    """`sgm`: UNet modules under their original (SGM) block names, as SDXL files have them."""
    component, module_path = split_component(key)
    path = to_file_path(component, module_path)
    if sgm and component == "unet":
        original = original_module_path(path, sdxl_module_map())
        if original is None:
            raise TunelabError(f"{key} has no place in SDXL's original UNet layout")
        path = original
    return f"{prefixes[component]}_{path.replace('.', '_')}"


def is_sdxl(base_model_version: str | None) -> bool:
    return bool(base_model_version) and base_model_version.startswith("sdxl")


# kohya's base-model version -> the transformer layout of its LoRAs (Flux.1's is the default for a transformer).
TRANSFORMER_LAYOUTS = {layout.base_model_version: layout for layout in (FLUX, SD3)}


def transformer_layout(base_model_version: str | None):
    return TRANSFORMER_LAYOUTS.get(base_model_version or "", FLUX)


def to_kohya_tensors(lora: LoraSet, base_model_version: str | None = None) -> dict[str, torch.Tensor]:
    """kohya tensors; transformer LoRAs in kohya's layout for their family (Flux.1, SD3), SDXL ones in SGM block names."""
    if any(split_component(key)[0] == DENOISER for key in lora):
        return transformer_layout(base_model_version).to_tensors(lora)
    prefixes = kohya_prefixes(split_component(key)[0] for key in lora)
    sgm = is_sdxl(base_model_version) or "text_encoder_2" in prefixes
    tensors: dict[str, torch.Tensor] = {}
    for key, module in lora.items():
        name = kohya_name(key, prefixes, sgm)
        tensors.update({f"{name}.{part}": tensor for part, tensor in module_to_parts(module).items()})
    return tensors


# tunelab's algorithm -> LyCORIS's `algo` network argument (DoRA is LyCORIS's LoCon with dora_wd).
LYCORIS_ALGO = {"loha": "loha", "lokr": "lokr", "dora": "locon", "loha+dora": "loha", "lokr+dora": "lokr"}


def kohya_metadata(lora: LoraSet, base_model_version: str, extra: dict[str, str] | None = None,
                   network_args: dict[str, str] | None = None) -> dict[str, str]:
    """The `ss_*` keys kohya's tools and UIs read to show a LoRA's settings.

    kohya keeps two settings: network_dim / network_alpha for linear layers (and 1x1 convs),
    conv_dim / conv_alpha in network_args for convolutions with larger kernels. LoHa, LoKr and DoRA
    files are LyCORIS's: `ss_network_module` lycoris.kohya and `algo` (with `dora_wd` for DoRA) in
    network_args; `network_args` adds the algorithm's own settings (LoKr's factor, ...).
    """

    def is_spatial(module: AdapterModule) -> bool:
        shape = module.delta_shape
        return len(shape) == 4 and tuple(shape[2:]) != (1, 1)

    def dim_and_alpha(modules: list[AdapterModule]) -> tuple[str, str]:
        ranks = [module.rank for module in modules if module.rank is not None]
        alphas = {module.alpha for module in modules}
        return str(max(ranks, default=0)), str(next(iter(alphas))) if len(alphas) == 1 else "Dynamic"

    conv = [module for module in lora.values() if is_spatial(module)]
    linear = [module for module in lora.values() if not is_spatial(module)] or conv
    network_dim, network_alpha = dim_and_alpha(linear) if linear else ("0", "0")
    args: dict[str, str] = {}
    network_module = "networks.lora"
    kinds = algorithms(lora)
    if kinds and kinds != ["lora"]:
        algorithm = kinds[0]
        network_module = "lycoris.kohya"
        args["algo"] = LYCORIS_ALGO[algorithm]
        if algorithm.endswith("dora"):
            args["dora_wd"] = "True"
    if conv:
        args["conv_dim"], args["conv_alpha"] = dim_and_alpha(conv)
    args.update(network_args or {})
    metadata = {
        "ss_network_module": network_module,
        "ss_network_dim": network_dim,
        "ss_network_alpha": network_alpha,
        "ss_base_model_version": base_model_version,
        "ss_v2": str(base_model_version.startswith("sd_v2")),
        "ss_network_args": json.dumps(args),
    }
    metadata.update(extra or {})
    return metadata


def write_kohya_lora(lora: LoraSet, path: Path, metadata: dict[str, str]) -> Path:
    return save_tensors(to_kohya_tensors(lora, metadata.get("ss_base_model_version")), path, metadata)


def is_kohya_lora(keys: Iterable[str]) -> bool:
    """Module names with kohya's prefixes and LyCORIS parts (lora_down, hada_w1_a, lokr_w1, ...)."""
    return any(key.startswith(("lora_unet_", "lora_te")) and key.partition(".")[2] not in ("", "alpha", "dora_scale")
               and is_module_part(key.partition(".")[2]) for key in keys)


# kohya prefix -> component. SD 1.x/2.x files use lora_te; SDXL files lora_te1 / lora_te2.
_COMPONENTS = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder", "lora_te2": "text_encoder_2"}

# Module names in diffusers UNets and CLIP text encoders that hold '_' themselves; kohya's
# '.' -> '_' makes them indistinguishable from path separators without this list.
COMPOUND_NAMES = frozenset({
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
    "proj_in", "proj_out", "conv_in", "conv_out", "conv_shortcut", "time_emb_proj", "time_embedding",
    "linear_1", "linear_2", "add_embedding", "text_model", "self_attn", "q_proj", "k_proj", "v_proj",
    "out_proj", "text_projection", "add_k_proj", "add_v_proj", "add_q_proj", "to_add_out", "proj_attn",
})
_LONGEST_COMPOUND = max(name.count("_") + 1 for name in COMPOUND_NAMES)

# SGM / LDM block names (`lora_unet_input_blocks_4_1_...`): SDXL files from kohya use them.
_ORIGINAL_BLOCK_PREFIXES = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")


def module_key_from_kohya_name(name: str) -> str | None:
    """A kohya name as a module key, without a model: `lora_unet_down_blocks_0_attentions_0_proj_in`
    -> `unet.down_blocks.0.attentions.0.proj_in`; None for a prefix that names no component.

    Greedy: at each position the longest known compound name wins, any other word is one
    path level. Exact for diffusers' UNet and CLIP module names; a model's own names
    (`from_kohya_tensors(..., module_keys)`) are exact for anything.
    """
    prefix = next((p for p in sorted(_COMPONENTS, key=len, reverse=True) if name.startswith(p + "_")), None)
    if prefix is None:
        return None
    component = _COMPONENTS[prefix]
    words = name[len(prefix) + 1 :].split("_")
    levels = []
    position = 0
    while position < len(words):
        for length in range(min(_LONGEST_COMPOUND, len(words) - position), 0, -1):
            candidate = "_".join(words[position : position + length])
            if length == 1 or candidate in COMPOUND_NAMES:
                levels.append(candidate)
                position += length
                break
    return f"{component}.{from_file_path(component, '.'.join(levels))}"


def _grouped(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Module name -> its parts: `lora_unet_x.lora_down.weight` -> {"lora_unet_x": {"lora_down.weight": ...}}."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, part = key.partition(".")
        if not part:
            raise TunelabError(f"unrecognised keys in this kohya LoRA file ({key}); refusing to guess what they do")
        modules.setdefault(name, {})[part] = tensor
    return dict(sorted(modules.items()))


@functools.cache
def sdxl_module_map() -> dict[str, str]:
    """diffusers UNet module path -> SGM path, for SDXL's UNet (from the config shipped for single files).

    Exact for SDXL and for any UNet laid out like it level by level (2 layers per level, attention
    from the second level on), which `tiny-sdxl` is."""
    config = json.loads((CONFIGS_DIR / "sdxl" / "unet" / "config.json").read_text())
    return unet_module_map(SimpleNamespace(class_embed_type=None, **config), added_embeddings=True)


@functools.cache
def _sgm_to_diffusers_names() -> list[tuple[str, str]]:
    """(SGM kohya name part, diffusers kohya name part), longest first: `input_blocks_4_1` -> `down_blocks_1_attentions_0`."""
    pairs = {original.replace(".", "_"): diffusers.replace(".", "_") for diffusers, original in sdxl_module_map().items()}
    return sorted(pairs.items(), key=lambda pair: len(pair[0]), reverse=True)


def from_sgm_name(name: str) -> str:
    """A kohya UNet name in SGM blocks (`lora_unet_input_blocks_4_1_proj_in`) in diffusers blocks
    (`lora_unet_down_blocks_1_attentions_0_proj_in`); other names unchanged."""
    prefix = "lora_unet_"
    if not name.startswith(prefix):
        return name
    rest = name[len(prefix) :]
    for original, diffusers in _sgm_to_diffusers_names():
        if rest == original or rest.startswith(original + "_"):
            return prefix + diffusers + rest[len(original) :]
    return name


def _resolver(module_keys: Iterable[str] | None):
    if module_keys is None:
        return module_key_from_kohya_name
    module_keys = list(module_keys)
    prefixes = kohya_prefixes(split_component(key)[0] for key in module_keys)
    by_kohya_name = {kohya_name(key, prefixes): key for key in module_keys if split_component(key)[0] in prefixes}
    return by_kohya_name.get


def from_kohya_tensors(tensors: dict[str, torch.Tensor], module_keys: Iterable[str] | None = None) -> LoraSet:
    """kohya and LyCORIS (LoCon, LoHa, LoKr, DoRA) tensors as a LoraSet.

    kohya names replace every '.' with '_'. With `module_keys` (a model's own
    "<component>.<module path>" names) each name is resolved exactly against that model
    and a name it lacks is an error; without, names are resolved from their spelling.
    """
    modules = {name: module_from_parts(name, parts) for name, parts in _grouped(tensors).items()}
    resolve = _resolver(module_keys)
    for layout in TRANSFORMER_LAYOUTS.values():
        if layout.matches(modules):
            return layout.from_tensors(modules, resolve)
    lora: LoraSet = {}
    unknown = []
    for name, module in modules.items():
        key = resolve(from_sgm_name(name) if name.startswith(_ORIGINAL_BLOCK_PREFIXES) else name)
        if key is None:
            unknown.append(name)
            continue
        lora[key] = module
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise TunelabError(
            f"{len(unknown)} LoRA modules match nothing in this model: {shown}; is it a LoRA for another architecture?"
        )
    return lora
