"""Read and write LoRA files in any supported layout; callers see only `LoraSet`."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Literal

from tunelab.errors import TunelabError
from tunelab.formats import kohya_lora, peft_lora
from tunelab.lora.model import LoraSet

LoraFormat = Literal["kohya", "peft"]
_WRITERS = {"kohya": kohya_lora.write_kohya_lora, "peft": peft_lora.write_peft_lora}


def write_lora(lora: LoraSet, path: Path, file_format: LoraFormat, metadata: dict[str, str]) -> Path:
    return _WRITERS[file_format](lora, path, metadata)


def read_lora(path: Path, module_keys: Iterable[str]) -> tuple[LoraSet, dict[str, str]]:
    """`module_keys` are the model's own "<component>.<module path>" names, used to resolve kohya names."""
    from tunelab.formats.safe_load import load_state_dict, read_safetensors_metadata

    path = Path(path)
    tensors = load_state_dict(path)
    metadata = read_safetensors_metadata(path) if path.suffix == ".safetensors" else {}
    if kohya_lora.is_kohya_lora(tensors):
        return kohya_lora.from_kohya_tensors(tensors, module_keys), metadata
    if peft_lora.is_peft_lora(tensors):
        return peft_lora.from_peft_tensors(tensors, metadata), metadata
    raise TunelabError(f"{path}: not a LoRA file (no kohya lora_down/lora_up or PEFT lora_A/lora_B keys)")
