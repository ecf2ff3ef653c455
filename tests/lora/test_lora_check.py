"""`tunelab lora check`: per module, whether A1111, ComfyUI and diffusers apply a LoRA file on a model.

Files are written by tunelab's own LoRA writer on the tiny presets, then broken on purpose (a lora_down
without its lora_up, a module the model lacks). The diffusers column is compared with what diffusers'
`load_lora_weights` really does on the same tiny model: which layers end up with a non-zero LoRA.
"""

from __future__ import annotations

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from helpers import run_cli
from tunelab.formats.adapter_modules import DoraModule, LohaModule
from tunelab.formats.lora_io import output_metadata, write_lora
from tunelab.formats.lora_set import LoraModule
from tunelab.formats.module_paths import from_file_path
from tunelab.lora import check
from tunelab.lora.check import SOMETHING_SKIPPED_EXIT
from tunelab.lora.modules import adaptable_modules
from tunelab.models.family import family_for
from tunelab.models.presets import build_preset

COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")


def written_lora(preset: str, file_format: str, path, algorithm: str = "lora") -> dict[str, torch.Tensor]:
    """A rank-2 LoRA (or LoHa, DoRA) on the first blocks' attention (and the text encoders' first layer), as
    tunelab writes it."""
    pipeline = build_preset(preset)
    modules = adaptable_modules(pipeline)
    keys = [key for key in modules if "blocks.0." in key and (".attn1." in key or ".attn." in key or "proj_mlp" in key)]
    keys += [key for key in modules if key.startswith("text_encoder") and ".layers.0.self_attn." in key]
    generator = torch.Generator().manual_seed(0)
    lora = {key: LoraModule(torch.randn(2, modules[key].weight.shape[1], generator=generator),
                            torch.randn(modules[key].weight.shape[0], 2, generator=generator), 2.0) for key in keys}
    if algorithm == "loha":
        lora = {key: LohaModule({"hada_w1_a": module.up, "hada_w1_b": module.down, "hada_w2_a": module.up.clone(),
                                 "hada_w2_b": module.down.clone()}, 2.0) for key, module in lora.items()}
    if algorithm == "dora":
        lora = {key: DoraModule(module, torch.ones(module.up.shape[0], 1)) for key, module in lora.items()}
    version = family_for(pipeline).base_model_version
    write_lora(lora, path, file_format, output_metadata(lora, file_format, {}, version))
    return load_file(path)


def diffusers_applied(preset: str, path) -> set[str]:
    """The layers ("<component>.<path>") diffusers' own loader gives a LoRA (a non-zero lora_B, or one it never
    loaded, left on the meta device); none if it refuses the file."""
    pipeline = build_preset(preset)
    try:
        pipeline.load_lora_weights(str(path))
    except Exception:  # diffusers refused the file: nothing applied
        return set()
    applied = set()
    for component in COMPONENTS:
        root = getattr(pipeline, component, None)
        for name, layer in (root.named_modules() if root is not None else ()):
            if isinstance(layer, BaseTunerLayer) and any(up.weight.is_meta or up.weight.abs().sum() > 0
                                                                    for up in layer.lora_B.values()):
                applied.add(f"{component}.{from_file_path(component, name)}")
    return applied


def predicted(result: dict, tool: str, statuses=("applies", "wrong")) -> set[str]:
    return {layer for row in result["modules"] if row[tool]["status"] in statuses for layer in row["layers"]}


def rows(result: dict, tool: str, status: str) -> set[str]:
    return {row["name"] for row in result["modules"] if row[tool]["status"] == status}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("check")
    made = {}
    sd = written_lora("tiny-sd", "kohya", folder / "sd.safetensors")
    broken = sorted(key for key in sd if key.startswith("lora_unet") and key.endswith("lora_up.weight"))[0]
    save_file({key: value for key, value in sd.items() if key != broken}, folder / "sd-partner.safetensors")
    save_file({**sd, "lora_unet_not_a_layer.lora_down.weight": torch.ones(2, 4),
               "lora_unet_not_a_layer.lora_up.weight": torch.ones(4, 2)}, folder / "sd-foreign.safetensors")
    widened = sorted(key for key in sd if key.startswith("lora_unet") and key.endswith("lora_down.weight"))[0]
    save_file({**sd, widened: torch.ones(2, sd[widened].shape[1] + 1)}, folder / "sd-shape.safetensors")
    made["shape"] = (folder / "sd-shape.safetensors", widened.split(".")[0])
    made["partner"], made["foreign"] = (folder / "sd-partner.safetensors", broken.split(".")[0]), folder / "sd-foreign.safetensors"
    peft = written_lora("tiny-sd", "peft", folder / "sd-peft.safetensors")
    no_b = sorted(key for key in peft if key.startswith("unet") and key.endswith("lora_B.weight"))[0]
    save_file({**{key: value for key, value in peft.items() if key != no_b}, "unet.not_a_layer.lora_A.weight": torch.ones(2, 4),
               "unet.not_a_layer.lora_B.weight": torch.ones(4, 2)}, folder / "sd-peft-broken.safetensors",
              metadata=load_file_metadata(folder / "sd-peft.safetensors"))
    made["peft broken"] = (folder / "sd-peft-broken.safetensors", no_b.removesuffix(".lora_B.weight"))
    written_lora("tiny-sdxl", "kohya", folder / "sdxl.safetensors")
    written_lora("tiny-flux", "kohya", folder / "flux.safetensors")
    flux_peft = written_lora("tiny-flux", "peft", folder / "flux-peft.safetensors")
    no_a = sorted(key for key in flux_peft if key.endswith("lora_A.weight"))[0]
    save_file({key: value for key, value in flux_peft.items() if key != no_a}, folder / "flux-peft-broken.safetensors",
              metadata=load_file_metadata(folder / "flux-peft.safetensors"))
    made["flux peft broken"] = (folder / "flux-peft-broken.safetensors", no_a.removesuffix(".lora_A.weight"))
    made["sdxl"], made["flux"] = folder / "sdxl.safetensors", folder / "flux.safetensors"
    flux = load_file(made["flux"])  # without the single blocks' linear1, which diffusers splits at Flux.1's widths
    save_file({key: value for key, value in flux.items() if "single_blocks" not in key}, folder / "flux-double.safetensors")
    made["flux double"] = folder / "flux-double.safetensors"
    for file_format in ("kohya", "peft"):
        written_lora("tiny-sd3", file_format, folder / f"sd3-{file_format}.safetensors")
        made[f"sd3 {file_format}"] = folder / f"sd3-{file_format}.safetensors"
    for algorithm in ("loha", "dora"):
        written_lora("tiny-sd", "kohya", folder / f"{algorithm}.safetensors", algorithm)
        made[algorithm] = folder / f"{algorithm}.safetensors"
    return made


@pytest.fixture(scope="module")
def checked(files):
    """case -> `tunelab.lora.check` of its file, computed once (each loads the tiny model)."""
    results = {}

    def result(case: str, preset: str = "tiny-sd") -> dict:
        if case not in results:
            results[case] = check(path_of(files[case]), preset)
        return results[case]

    return result


def path_of(entry):
    return entry[0] if isinstance(entry, tuple) else entry


def load_file_metadata(path) -> dict[str, str]:
    with safe_open(str(path), "pt") as handle:
        return handle.metadata() or {}


@pytest.mark.parametrize("case,preset", [("partner", "tiny-sd"), ("foreign", "tiny-sd"), ("shape", "tiny-sd"), ("peft broken", "tiny-sd"),
                                         ("sdxl", "tiny-sdxl"), ("flux", "tiny-flux"), ("flux double", "tiny-flux"),
                                         ("flux peft broken", "tiny-flux"), ("sd3 kohya", "tiny-sd3"), ("sd3 peft", "tiny-sd3"),
                                         ("loha", "tiny-sd"), ("dora", "tiny-sd")])
def test_the_diffusers_column_is_what_diffusers_really_applies(files, checked, case, preset):
    assert predicted(checked(case, preset), "diffusers") == diffusers_applied(preset, path_of(files[case]))


def test_a_missing_partner_and_a_foreign_module_are_named_per_tool(files, checked):
    partner = files["partner"][1]
    result = checked("partner")
    assert not result["all_apply"]
    assert rows(result, "ComfyUI", "skipped") == {partner}  # "lora key not loaded", the rest applies
    assert "down factor without its up factor" in next(row for row in result["modules"] if row["name"] == partner)["ComfyUI"]["reason"]
    assert rows(result, "A1111", "applies") == set()  # no module type accepts a lone lora_down: the file fails
    assert rows(result, "diffusers", "applies") == set()

    foreign = checked("foreign")
    for tool in ("A1111", "ComfyUI"):
        assert rows(foreign, tool, "skipped") == {"lora_unet_not_a_layer"}
    assert rows(foreign, "diffusers", "skipped") == {"lora_unet_not_a_layer"}  # "unexpected keys", the rest loads

    widened = files["shape"][1]
    shape = checked("shape")
    for tool in ("A1111", "ComfyUI"):  # that layer fails or is not merged; the others apply
        assert rows(shape, tool, "skipped") == {widened}
    assert rows(shape, "diffusers", "applies") == set()  # size mismatch: the file is refused

    no_b = files["peft broken"][1]
    peft = checked("peft broken")
    assert rows(peft, "diffusers", "skipped") == {"unet.not_a_layer"} and rows(peft, "diffusers", "wrong") == {no_b}
    assert rows(peft, "A1111", "applies") == set()  # A1111 reads kohya names only


def test_loha_and_dora_files(checked):
    loha = checked("loha")
    assert rows(loha, "diffusers", "skipped") == {row["name"] for row in loha["modules"]}  # the file is refused
    assert rows(loha, "A1111", "skipped") == rows(loha, "ComfyUI", "skipped") == set()
    dora = checked("dora")
    assert rows(dora, "diffusers", "wrong") == {row["name"] for row in dora["modules"]}  # loaded without dora_scale


def test_diffusers_reads_no_kohya_sd3_file_and_kohya_flux_only_at_flux1_widths(checked):
    sd3 = checked("sd3 kohya", "tiny-sd3")
    assert rows(sd3, "diffusers", "skipped") == {row["name"] for row in sd3["modules"]}  # silently loads nothing
    assert all("--format peft" in row["diffusers"]["reason"] for row in sd3["modules"])
    assert rows(checked("sd3 peft", "tiny-sd3"), "diffusers", "skipped") == set()
    assert rows(checked("flux double", "tiny-flux"), "diffusers", "skipped") == set()
    assert rows(checked("flux", "tiny-flux"), "diffusers", "applies") == set()  # linear1 at tiny widths: refused


def test_families_and_exit_statuses(files, checked, tmp_path, capsys):
    flux = checked("flux", "tiny-flux")
    assert rows(flux, "ComfyUI", "skipped") == set() and rows(flux, "A1111", "not checked") == {row["name"] for row in flux["modules"]}
    assert any(len(row["layers"]) == 3 for row in flux["modules"])  # a fused q/k/v module covers three layers

    assert run_cli("lora", "check", files["sdxl"], "--model", "tiny-sdxl") == 0
    assert "every module applies in all three" in capsys.readouterr().out
    assert run_cli("lora", "check", files["foreign"], "--model", "tiny-sd", "--json") == SOMETHING_SKIPPED_EXIT
    assert '"all_apply": false' in capsys.readouterr().out
    assert run_cli("lora", "check", tmp_path / "missing.safetensors", "--model", "tiny-sd") == 2
    save_file({"some.weight": torch.ones(3)}, tmp_path / "not-lora.safetensors")
    assert run_cli("lora", "check", tmp_path / "not-lora.safetensors", "--model", "tiny-sd") == 2
    assert "not a LoRA file" in capsys.readouterr().err
