"""Read and write LoRA files in any supported layout; callers see only `LoraSet`."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import torch

from tunelab.errors import TunelabError
from tunelab.formats import kohya_lora, lycoris, peft_lora
from tunelab.formats.lora_set import LoraSet, algorithms
from tunelab.safe_load import load_state_dict, read_safetensors_metadata

LoraFormat = Literal["kohya", "peft"]
LORA_FORMATS: tuple[LoraFormat, ...] = ("kohya", "peft")
_WRITERS = {"kohya": kohya_lora.write_kohya_lora, "peft": peft_lora.write_peft_lora}

# LyCORIS network arguments that only training decides (the others are read off the weights again).
LYCORIS_SETTINGS = ("factor", "decompose_both", "full_matrix", "use_tucker", "wd_on_out", "rank_dropout", "module_dropout")

# Metadata a file's layout or its weights decide; rewritten, never carried over, when a tool writes a new file.
_DERIVED_METADATA = (
    "format",
    peft_lora.ADAPTER_METADATA_KEY,
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_args",
    "ss_network_module",
    "ss_v2",
)


@dataclass
class LoraFile:
    lora: LoraSet
    metadata: dict[str, str]
    format: LoraFormat
    path: Path


def write_lora(lora: LoraSet, path: Path, file_format: LoraFormat, metadata: dict[str, str]) -> Path:
    return _WRITERS[file_format](lora, path, metadata)


def read_lora_file(path: str | Path, module_keys: Iterable[str] | None = None) -> LoraFile:
    """Read any supported LoRA file (kohya, LyCORIS LoCon/LoHa/LoKr/DoRA, PEFT/diffusers).

    `module_keys` are a model's own "<component>.<module path>" names: kohya names are then
    resolved exactly against that model. Without them, names are resolved from their spelling.
    """
    path = Path(path)
    tensors = load_state_dict(path)
    metadata = read_safetensors_metadata(path) if path.suffix.lower() == ".safetensors" else {}
    lycoris.refuse_unsupported(tensors, path.name)
    refuse_non_finite(tensors, path)
    try:
        if kohya_lora.is_kohya_lora(tensors):
            return LoraFile(_checked(kohya_lora.from_kohya_tensors(tensors, module_keys)), metadata, "kohya", path)
        if peft_lora.is_peft_lora(tensors):
            return LoraFile(_checked(peft_lora.from_peft_tensors(tensors, metadata)), metadata, "peft", path)
    except TunelabError as error:
        raise TunelabError(f"{path.name}: {error}") from None
    raise TunelabError(f"{path}: not a LoRA file (no kohya/LyCORIS lora_down, hada_w1_a or lokr_w1, nor PEFT lora_A keys)")


def refuse_non_finite(tensors: dict, path: Path) -> None:
    """A NaN or infinite weight (or alpha) would only show up as a black image; refuse the file, naming the tensor."""
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise TunelabError(f"{path.name}: tensor {key} holds NaN or infinite values; the file is broken")


def _checked(lora: LoraSet) -> LoraSet:
    """Alphas from metadata (PEFT) are numbers too, and must be finite."""
    for key, module in lora.items():
        if not math.isfinite(module.alpha):
            raise TunelabError(f"module {key}: alpha is {module.alpha}; the file is broken")
    return lora


def read_lora(path: Path, module_keys: Iterable[str] | None = None) -> tuple[LoraSet, dict[str, str]]:
    loaded = read_lora_file(path, module_keys)
    return loaded.lora, loaded.metadata


def base_model_version(lora: LoraSet, metadata: dict[str, str]) -> str:
    """kohya's base-model name: the file's own, else read off the modules (a transformer: Flux.1 or SD3; two text
    encoders: SDXL) or the cross-attention width (768: SD 1.x, 1024: SD 2.x)."""
    if metadata.get("ss_base_model_version"):
        return metadata["ss_base_model_version"]
    components = {key.split(".", 1)[0] for key in lora}
    if "transformer" in components:
        # Flux.1's single-stream blocks take every LoRA tunelab trains there; SD3's MMDiT has none.
        flux = any(key.startswith("transformer.single_transformer_blocks.") for key in lora)
        return kohya_lora.FLUX.base_model_version if flux else kohya_lora.SD3.base_model_version
    if "text_encoder_2" in components:
        return "sdxl_base_v1-0"
    for key, module in lora.items():
        if key.startswith("unet.") and key.endswith("attn2.to_k"):
            return {768: "sd_v1", 1024: "sd_v2"}.get(module.delta_shape[1], "unknown")
    return "unknown"


def output_metadata(lora: LoraSet, file_format: LoraFormat, carried: dict[str, str], base_version: str) -> dict[str, str]:
    """Metadata for a file a tool writes: what the sources said, with the layout's own keys made anew
    (a LyCORIS algorithm's own settings, such as LoKr's factor, carried over when the algorithm is the same)."""
    kept = {key: value for key, value in carried.items() if key not in _DERIVED_METADATA}
    if file_format == "kohya":
        return kohya_lora.kohya_metadata(lora, base_version, kept, _algorithm_settings(lora, carried))
    return kept


def _algorithm_settings(lora: LoraSet, carried: dict[str, str]) -> dict[str, str]:
    try:
        args = json.loads(carried.get("ss_network_args", "{}"))
    except ValueError:
        return {}
    kinds = algorithms(lora)
    if not isinstance(args, dict) or not kinds or args.get("algo") != kohya_lora.LYCORIS_ALGO.get(kinds[0]):
        return {}
    return {key: str(value) for key, value in args.items() if key in LYCORIS_SETTINGS}


def encoded_size(lora: LoraSet, file_format: LoraFormat, metadata: dict[str, str]) -> int:
    """Bytes the LoRA takes as a file in this layout (written once to a scratch folder, then measured)."""
    with tempfile.TemporaryDirectory() as folder:
        return write_lora(lora, Path(folder) / "lora.safetensors", file_format, metadata).stat().st_size
