"""What a LoRA file holds, summarised for people (text) and programs (a JSON-ready dict)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tunelab.formats.lora_set import AdapterModule, LoraModule, LoraSet, algorithm_title, split_component

# Metadata values longer than this are cut in the text summary (JSON keeps them whole).
METADATA_WIDTH = 100


def module_kind(shape) -> str:
    if len(shape) == 2:
        return "linear"
    return f"conv {shape[2]}x{shape[3]}"


def _kind(module: AdapterModule) -> str:
    """LoHa and LoKr factors may hold a conv kernel flattened into their columns: such a module reads as linear/flat."""
    kind = module_kind(module.delta_shape)
    return kind if kind != "linear" or isinstance(module, LoraModule) else "linear/flat"


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def extraction_settings(metadata: dict[str, str]) -> dict | None:
    """How `tunelab lora extract` made the file (clamp rule, module set, ranks), from its record; None if it did not."""
    try:
        record = json.loads(metadata["tunelab_extract"])
    except (KeyError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    return {
        "rank": record.get("rank"),
        "conv_rank": record.get("conv_rank"),
        "clamp_quantile": record.get("clamp_quantile"),
        # Records written before --clamp-mode and --modules existed: tunelab then always clamped by
        # absolute values and extracted every module.
        "clamp_mode": record.get("clamp_mode", "absolute"),
        "modules": record.get("modules", "all"),
    }


def summarize(lora: LoraSet, metadata: dict[str, str], file_format: str, path: Path) -> dict:
    modules = [
        {
            "key": key,
            "algorithm": module.algorithm,
            "kind": _kind(module),
            "shape": list(module.delta_shape),
            "rank": module.rank,
            "alpha": module.alpha,
            "dtype": _dtype_name(module.dtype),
        }
        for key, module in sorted(lora.items())
    ]

    def counts(values) -> dict[str, int]:
        # A LoKr whose factors are both full has no rank (None): listed last, as "full".
        ordered = sorted(Counter(values).items(), key=lambda item: (item[0] is None, item[0]))
        return {"full" if value is None else str(value): count for value, count in ordered}

    return {
        "file": str(path),
        "format": file_format,
        "size_bytes": path.stat().st_size,
        "parameters": sum(module.parameter_count for module in lora.values()),
        "module_count": len(modules),
        "algorithms": counts(module["algorithm"] for module in modules),
        "components": counts(split_component(key)[0] for key in lora),
        "kinds": counts(module["kind"] for module in modules),
        "ranks": counts(module["rank"] for module in modules),
        "alphas": counts(module["alpha"] for module in modules),
        "dtypes": counts(module["dtype"] for module in modules),
        "metadata": dict(sorted(metadata.items())),
        "extraction": extraction_settings(metadata),
        "modules": modules,
    }


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _counted(counts: dict[str, int]) -> str:
    if len(counts) == 1:
        return f"{next(iter(counts))} (all modules)"
    return ", ".join(f"{value} ({count} modules)" for value, count in counts.items())


def _extraction_line(settings: dict) -> str:
    quantile = settings["clamp_quantile"]
    clamp = "none" if quantile is not None and quantile >= 1 else f"{settings['clamp_mode']} at quantile {quantile}"
    conv = settings["conv_rank"] if settings["conv_rank"] is not None else "none (3x3 convs left out)"
    return f"extracted   clamp {clamp}; modules {settings['modules']}; rank {settings['rank']}, conv rank {conv}"


def render(summary: dict, list_modules: bool = False) -> str:
    lines = [
        f"file        {summary['file']}",
        f"format      {summary['format']}",
        f"algorithm   {_counted({algorithm_title(name): count for name, count in summary['algorithms'].items()})}",
        f"size        {human_size(summary['size_bytes'])} ({summary['parameters']:,} parameters)",
        f"modules     {summary['module_count']}: " + ", ".join(f"{name} {count}" for name, count in summary["components"].items()),
        "kinds       " + ", ".join(f"{kind} {count}" for kind, count in summary["kinds"].items()),
        f"rank        {_counted(summary['ranks'])}",
        f"alpha       {_counted(summary['alphas'])}",
        f"precision   {_counted(summary['dtypes'])}",
    ]
    if summary["extraction"] is not None:
        lines.append(_extraction_line(summary["extraction"]))
    if summary["metadata"]:
        lines.append("metadata")
        for key, value in summary["metadata"].items():
            shown = value if len(value) <= METADATA_WIDTH else value[: METADATA_WIDTH - 3] + "..."
            lines.append(f"  {key} = {shown}")
    else:
        lines.append("metadata    (none)")
    if list_modules:
        lines.append("modules (key, kind, weight shape, rank, alpha, dtype, algorithm)")
        for module in summary["modules"]:
            shape = "x".join(map(str, module["shape"]))
            rank = module["rank"] if module["rank"] is not None else "full"
            lines.append(f"  {module['key']}  {module['kind']}  {shape}  r={rank}  alpha={module['alpha']:g}  {module['dtype']}  "
                         f"{algorithm_title(module['algorithm'])}")
    return "\n".join(lines)
