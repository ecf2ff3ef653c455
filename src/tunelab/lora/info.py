"""What a LoRA file holds, summarised for people (text) and programs (a JSON-ready dict)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tunelab.formats.lora_set import LoraSet, split_component

# Metadata values longer than this are cut in the text summary (JSON keeps them whole).
METADATA_WIDTH = 100


def module_kind(down_shape) -> str:
    if len(down_shape) == 2:
        return "linear"
    return f"conv {down_shape[2]}x{down_shape[3]}"


def _dtype_name(tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def summarize(lora: LoraSet, metadata: dict[str, str], file_format: str, path: Path) -> dict:
    modules = [
        {
            "key": key,
            "kind": module_kind(tuple(module.down.shape)),
            "shape": [module.up.shape[0], *module.down.shape[1:]],
            "rank": module.rank,
            "alpha": module.alpha,
            "dtype": _dtype_name(module.down),
        }
        for key, module in sorted(lora.items())
    ]

    def counts(values) -> dict[str, int]:
        return {str(value): count for value, count in sorted(Counter(values).items())}

    return {
        "file": str(path),
        "format": file_format,
        "size_bytes": path.stat().st_size,
        "parameters": sum(module.down.numel() + module.up.numel() for module in lora.values()),
        "module_count": len(modules),
        "components": counts(split_component(key)[0] for key in lora),
        "kinds": counts(module["kind"] for module in modules),
        "ranks": counts(module["rank"] for module in modules),
        "alphas": counts(module["alpha"] for module in modules),
        "dtypes": counts(module["dtype"] for module in modules),
        "metadata": dict(sorted(metadata.items())),
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


def render(summary: dict, list_modules: bool = False) -> str:
    lines = [
        f"file        {summary['file']}",
        f"format      {summary['format']}",
        f"size        {human_size(summary['size_bytes'])} ({summary['parameters']:,} parameters)",
        f"modules     {summary['module_count']}: " + ", ".join(f"{name} {count}" for name, count in summary["components"].items()),
        "kinds       " + ", ".join(f"{kind} {count}" for kind, count in summary["kinds"].items()),
        f"rank        {_counted(summary['ranks'])}",
        f"alpha       {_counted(summary['alphas'])}",
        f"precision   {_counted(summary['dtypes'])}",
    ]
    if summary["metadata"]:
        lines.append("metadata")
        for key, value in summary["metadata"].items():
            shown = value if len(value) <= METADATA_WIDTH else value[: METADATA_WIDTH - 3] + "..."
            lines.append(f"  {key} = {shown}")
    else:
        lines.append("metadata    (none)")
    if list_modules:
        lines.append("modules (key, kind, weight shape, rank, alpha, dtype)")
        for module in summary["modules"]:
            shape = "x".join(map(str, module["shape"]))
            lines.append(f"  {module['key']}  {module['kind']}  {shape}  r={module['rank']}  alpha={module['alpha']:g}  {module['dtype']}")
    return "\n".join(lines)
