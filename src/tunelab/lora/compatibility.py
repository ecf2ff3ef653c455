"""`tunelab lora check`: which modules of a LoRA file A1111, ComfyUI and diffusers would apply on a model.

Each tool's rules are written here from reading its loader (none of their code is used):

- A1111 (extensions-builtin/Lora): takes a key up to its first '.' as the layer's name and looks it
  up among the model's layers (kohya names in diffusers or original block names); an unknown name
  is skipped ("didn't match keys"). A matched layer whose parts no module type accepts (a lora_down
  without its lora_up) stops the whole file. A change of another shape fails on its layer only. The
  OpenCLIP text encoders (SDXL's second, SD 2.x's) fuse q, k, v: their attention takes a LoRA only
  with q_proj, k_proj, v_proj and out_proj together. Modelled for UNet models only (transformer
  models are "not checked").
- ComfyUI (comfy/lora.py): maps kohya names (UNet, text encoders' attention and MLP projections,
  the original transformer names with fused q/k/v) and PEFT names to weights; each key not used is
  "lora key not loaded" and skipped; a lora_up without its lora_down stops the loader (KeyError);
  a change of another shape is "SHAPE MISMATCH ... not merged" and skipped.
- diffusers (loaders/lora_conversion_utils.py, then PEFT): a kohya file is converted whole or
  refused (a missing partner, parts it does not know, LoHa/LoKr); kohya Flux files are split at
  Flux.1's own widths, and a DoRA's dora_scale is dropped (a plain LoRA is loaded). The SD3 loader converts
  no kohya file: it keeps the keys under its components' names, so a kohya module loads nothing, silently. Names the
  model lacks are "unexpected keys", skipped; a lora_A or lora_B
  missing still gets a layer, with that factor never loaded (measured: left on the meta device, or
  the whole file refused on a transformer model); a shape that does not fit refuses the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tunelab.lora.loader_names import PEFT_PAIR, FileModule, ModelNames

TOOLS = ("A1111", "ComfyUI", "diffusers")
APPLIES, SKIPPED, WRONG, UNCHECKED = "applies", "skipped", "wrong", "not checked"
STATUSES = (APPLIES, SKIPPED, WRONG, UNCHECKED)
OPENCLIP_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
CLIP_PROJECTIONS = tuple(f"_self_attn_{name}" for name in OPENCLIP_ATTENTION) + ("_mlp_fc1", "_mlp_fc2")
PEFT_CLIP_PROJECTIONS = tuple(f".self_attn.{name}" for name in OPENCLIP_ATTENTION) + (".mlp.fc1", ".mlp.fc2")
# diffusers splits a kohya Flux single block's fused linear1 at Flux.1's widths (q, k, v, MLP in).
DIFFUSERS_FLUX_LINEAR1_WIDTHS = (3072, 3072, 3072, 12288)
FLUX_SINGLE_FUSED = "_linear1"
KOHYA_DORA_SCALE = "dora_scale"


@dataclass
class Verdict:
    status: str  # applies, skipped, wrong (applied, but not as the file says) or not checked (no rules for this model)
    reason: str = ""


@dataclass
class ModuleCheck:
    name: str
    kind: str
    layers: list[str]
    verdicts: dict[str, Verdict]


def check_modules(modules: list[FileModule], names: ModelNames) -> list[ModuleCheck]:
    by_name = {module.name: module for module in modules}
    stops = {"A1111": _a1111_stop(modules, names), "ComfyUI": _comfyui_stop(modules, names),
             "diffusers": _diffusers_refusal(modules, names)}
    rules = {"A1111": _a1111, "ComfyUI": _comfyui, "diffusers": _diffusers}
    checks = []
    for module in modules:
        verdicts = {}
        for tool in TOOLS:
            verdicts[tool] = Verdict(SKIPPED, stops[tool]) if stops[tool] else rules[tool](module, names, by_name)
        checks.append(ModuleCheck(module.name, module.kind, _layers(module, names) or [], verdicts))
    return checks


def report(checks: list[ModuleCheck], file: str, model: str) -> dict:
    counts = {tool: {status: sum(check.verdicts[tool].status == status for check in checks) for status in STATUSES}
              for tool in TOOLS}
    return {
        "file": file,
        "model": model,
        "all_apply": all(verdict.status == APPLIES for check in checks for verdict in check.verdicts.values()),
        "summary": counts,
        "modules": [{"name": check.name, "kind": check.kind, "layers": check.layers,
                     **{tool: asdict(verdict) for tool, verdict in check.verdicts.items()}} for check in checks],
    }


# ----------------------------------------------------------------------------- which layers a name means

def _layers(module: FileModule, names: ModelNames) -> list[str] | None:
    if module.kohya_style:
        return names.kohya_layers(module.name)
    layer = names.peft.get(module.name)
    return [layer] if layer else None


def _fits(module: FileModule, layers: list[str], names: ModelNames) -> bool:
    delta = module.delta_shape()
    if delta is None:  # LoHa/LoKr: their shapes are checked by the tools as they build the change
        return True
    first = names.shapes[layers[0]]
    expected = (sum(names.shapes[layer][0] for layer in layers), *first[1:])
    return _squeezed(delta) == _squeezed(expected)


def _squeezed(shape) -> tuple[int, ...]:
    shape = tuple(shape)
    return shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else shape  # a 1x1 conv is a linear layer


def _shape_text(module: FileModule, layers: list[str], names: ModelNames) -> str:
    return f"change {tuple(module.delta_shape())} on layer {names.shapes[layers[0]]}"


# ----------------------------------------------------------------------------- A1111

def _a1111_layers(module: FileModule, names: ModelNames) -> list[str] | None:
    if not (names.unet_model and module.kohya_style):
        return None
    return names.kohya.get(module.name) or names.original.get(module.name)


def _a1111_stop(modules: list[FileModule], names: ModelNames) -> str:
    for module in modules:
        if _a1111_layers(module, names) and module.kind in ("down only", "up only", "unknown"):
            return f"A1111 refuses the whole file: no module type accepts the parts of {module.name} ({', '.join(module.parts)})"
    return ""


def _openclip_attention(name: str, names: ModelNames) -> bool:
    second = name.startswith("lora_te2_")
    only = name.startswith("lora_te_") and names.family.base_model_version.startswith("sd_v2")
    return (second or only) and any(name.endswith(f"_self_attn_{part}") for part in OPENCLIP_ATTENTION)


def _a1111(module: FileModule, names: ModelNames, by_name: dict[str, FileModule]) -> Verdict:
    if not names.unet_model:
        return Verdict(UNCHECKED, f"this check knows A1111's LoRA loader on UNet models only, not on {names.family.title} "
                                  "(stock A1111 runs no Flux.1)")
    if not module.kohya_style:
        return Verdict(SKIPPED, "A1111 reads kohya names only (a key up to its first '.' names the layer)")
    layers = _a1111_layers(module, names)
    if not layers:
        return Verdict(SKIPPED, "no layer of this name in the model (A1111: didn't match keys)")
    if _openclip_attention(module.name, names):
        stem = module.name.rsplit("_", 2)[0]
        missing = [part for part in OPENCLIP_ATTENTION if f"{stem}_{part}" not in by_name]
        if missing:
            return Verdict(SKIPPED, f"OpenCLIP attention (fused q/k/v): A1111 needs q_proj, k_proj, v_proj and out_proj "
                                    f"together; missing {', '.join(missing)}")
    if not _fits(module, layers, names):
        return Verdict(SKIPPED, f"shape does not fit ({_shape_text(module, layers, names)}): an error on this layer")
    return Verdict(APPLIES)


# ----------------------------------------------------------------------------- ComfyUI

def _comfyui_layers(module: FileModule, names: ModelNames) -> list[str] | None:
    layers = _layers(module, names)
    if not layers or not layers[0].startswith("text_encoder"):
        return layers
    projections = CLIP_PROJECTIONS if module.kohya_style else PEFT_CLIP_PROJECTIONS
    return layers if module.name.endswith(projections) else None  # ComfyUI maps only these text-encoder layers


def _comfyui_stop(modules: list[FileModule], names: ModelNames) -> str:
    for module in modules:
        if _comfyui_layers(module, names) and module.kind == "up only":
            return f"ComfyUI's loader stops (KeyError): {module.name} has its up factor without the down one"
    return ""


def _comfyui(module: FileModule, names: ModelNames, by_name: dict[str, FileModule]) -> Verdict:
    layers = _comfyui_layers(module, names)
    if not layers:
        return Verdict(SKIPPED, "lora key not loaded: no layer of this name (ComfyUI maps only known names)")
    if module.kind == "down only":
        return Verdict(SKIPPED, "lora key not loaded: the down factor without its up factor")
    if module.kind == "unknown":
        return Verdict(SKIPPED, f"lora key not loaded: parts ComfyUI does not read ({', '.join(module.parts)})")
    if not _fits(module, layers, names):
        return Verdict(SKIPPED, f"SHAPE MISMATCH, weight not merged ({_shape_text(module, layers, names)})")
    return Verdict(APPLIES)


# ----------------------------------------------------------------------------- diffusers

def _diffusers_refusal(modules: list[FileModule], names: ModelNames) -> str:
    """Why diffusers' load_lora_weights refuses the whole file, or ''."""
    if not names.diffusers_reads_kohya:  # its kohya modules are filtered out unread: they neither load nor refuse
        modules = [module for module in modules if not module.kohya_style]
    kohya = any(module.kohya_style for module in modules)
    for module in modules:
        layers = _layers(module, names)
        if kohya and module.kind in ("loha", "lokr"):
            return f"diffusers refuses the file: it loads no LoHa/LoKr ({module.name})"
        if kohya and module.kind != "lora":
            return f"diffusers refuses the file: it cannot convert {module.name} ({module.kind}: {', '.join(module.parts)})"
        if kohya and layers and module.name.endswith(FLUX_SINGLE_FUSED) and len(layers) == len(DIFFUSERS_FLUX_LINEAR1_WIDTHS):
            widths = tuple(names.shapes[layer][0] for layer in layers)
            if widths != DIFFUSERS_FLUX_LINEAR1_WIDTHS:
                return (f"diffusers refuses the file: it splits {module.name} at Flux.1's widths "
                        f"{DIFFUSERS_FLUX_LINEAR1_WIDTHS}, this model's are {widths} (use a PEFT-layout file)")
        if not kohya and module.kind == "down only" and not names.unet_model:
            return f"diffusers refuses the file (KeyError): {module.name} has lora_A without lora_B"
        if not kohya and names.unet_model and module.kind == "unknown" and "lora" not in module.name + "".join(module.parts):
            return f"diffusers refuses the file: a key without 'lora' in its name ({module.name})"
        if layers and names.unet_model and module.delta_shape() is not None and not _fits(module, layers, names):
            return f"diffusers refuses the file: size mismatch on {module.name} ({_shape_text(module, layers, names)})"
    return ""


def _diffusers(module: FileModule, names: ModelNames, by_name: dict[str, FileModule]) -> Verdict:
    if module.kohya_style and not names.diffusers_reads_kohya:
        return Verdict(SKIPPED, f"diffusers reads no kohya-layout {names.kohya_layout.title} file: it loads nothing of it, "
                                "silently (write the file with --format peft, or `tunelab lora convert --to peft`)")
    layers = _layers(module, names)
    if not layers:
        return Verdict(SKIPPED, "unexpected keys: no layer of this name (diffusers warns and loads the rest)")
    if not module.kohya_style and module.kind in ("up only", "down only"):
        missing = PEFT_PAIR[0] if module.kind == "up only" else PEFT_PAIR[1]
        return Verdict(WRONG, f"{missing} missing: diffusers adds the layer with that factor never loaded "
                              "(not the file's change; on the meta device generation fails)")
    if module.kind == "unknown":
        return Verdict(SKIPPED, f"parts diffusers does not read ({', '.join(module.parts)})")
    if module.kohya_style and KOHYA_DORA_SCALE in module.parts:
        return Verdict(WRONG, "diffusers drops dora_scale from kohya files: a plain LoRA, not this DoRA")
    return Verdict(APPLIES)
