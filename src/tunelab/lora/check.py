"""`tunelab lora check FILE --model MODEL`: the compatibility table of a LoRA file on a model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunelab.config import option
from tunelab.errors import TunelabError
from tunelab.lora.compatibility import APPLIES, TOOLS, check_modules, report
from tunelab.lora.loader_names import file_modules, model_names
from tunelab.models.loading import load_pipeline
from tunelab.safe_load import load_state_dict

SOMETHING_SKIPPED_EXIT = 3  # exit status when a tool would skip, misapply or is not checked on a module; 2 is bad input
_LORA_KINDS = ("lora", "loha", "lokr", "down only", "up only")
_SHOWN_PER_REASON = 3


@dataclass
class CheckOptions:
    model: str = option("model the LoRA is for: preset name, diffusers folder or checkpoint file")
    json: bool = option("print the report as JSON", default=False)


def compatibility(file: str, model: str) -> dict:
    """Per module of the file: whether A1111, ComfyUI and diffusers apply it on the model, and why not."""
    modules = file_modules(load_state_dict(file))
    if not any(module.kind in _LORA_KINDS for module in modules):
        raise TunelabError(f"{file}: not a LoRA file (no lora_down/lora_up, lora_A/lora_B, hada_ or lokr_ keys)")
    return report(check_modules(modules, model_names(load_pipeline(model))), str(file), model)


def check(inputs, options: CheckOptions) -> dict:
    """`inputs`: the command's FileInput (lora/tools.py)."""
    result = compatibility(inputs.file, options.model)
    print(json.dumps(result, indent=2) if options.json else render_table(result))
    return result


def render_table(result: dict) -> str:
    width = max([len("module"), *(len(row["name"]) for row in result["modules"])])
    lines = [f"{Path(result['file']).name} on {result['model']}", "",
             f"{'module':<{width}}  " + "  ".join(f"{tool:<9}" for tool in TOOLS)]
    for row in result["modules"]:
        lines.append(f"{row['name']:<{width}}  " + "  ".join(f"{_mark(row[tool]['status']):<9}" for tool in TOOLS))
    lines.append("")
    for tool in TOOLS:
        counts = result["summary"][tool]
        unchecked = f", {counts['not checked']} not checked" if counts["not checked"] else ""
        lines.append(f"{tool}: {counts['applies']} applied, {counts['skipped']} skipped, {counts['wrong']} applied wrongly{unchecked}")
        reasons: dict[str, list[str]] = {}
        for row in result["modules"]:
            if row[tool]["status"] != APPLIES:
                reasons.setdefault(row[tool]["reason"], []).append(row["name"])
        for reason, names in reasons.items():
            more = f" (+{len(names) - _SHOWN_PER_REASON} more)" if len(names) > _SHOWN_PER_REASON else ""
            lines.append(f"  {reason}: {', '.join(names[:_SHOWN_PER_REASON])}{more}")
    lines.append("every module applies in all three" if result["all_apply"] else
                 f"some modules would not apply as written, or are not checked (exit status {SOMETHING_SKIPPED_EXIT})")
    return "\n".join(lines)


def _mark(status: str) -> str:
    return {"applies": "yes", "skipped": "SKIP", "wrong": "WRONG", "not checked": "?"}[status]
