"""`train lora --algorithm loha|lokr|dora` on every tiny family: the file holds what PEFT trained, `lora merge`
bakes the formula applied by hand, PEFT loads the --format peft file itself, and bad options are one line.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import load_file

from helpers import run_cli
from tunelab.formats.kohya_flux import _kohya_module as kohya_flux_module
from tunelab.formats.kohya_lora import kohya_name, kohya_prefixes
from tunelab.formats.lora_io import read_lora_file
from tunelab.lora.modules import adaptable_modules
from tunelab.methods.lora import ADAPTER_NAME, LoraMethod
from tunelab.models.loading import load_pipeline
from tunelab.training.loop import train
from tunelab.training.prepare import prepare_run

PROMPT = "a photo of sks toy"
ALGORITHMS = {"loha": {}, "lokr": {"decompose_both": True}, "dora": {}}
TINY_PRESETS = ("tiny-sd", "tiny-sdxl", "tiny-flux")


def run_values(algorithm: str, preset: str, images: Path, out: Path, **extra) -> dict:
    flux = preset == "tiny-flux"
    return {"model": preset, "images": str(images), "out": str(out), "prompt": PROMPT, "steps": 2, "learning_rate": 2e-2,
            "log_with": "none", "algorithm": algorithm, "train_text_encoder": True,
            # Flux: every part of kohya's fused modules (q, k, v and the MLP input), so LoHa and DoRA fuse.
            "targets": ["attention", "feedforward"] if flux else ["attention", "conv"],
            # kohya's Flux layout cannot hold a LoKr; PEFT's can.
            "format": "peft" if flux and algorithm == "lokr" else "kohya",
            **({} if flux else {"conv_rank": 2}), **ALGORITHMS[algorithm], **extra}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, subject_images):
    runs = {}

    def run(algorithm: str, preset: str, **extra):
        key = (algorithm, preset, tuple(sorted(extra.items())))
        if key not in runs:
            out = tmp_path_factory.mktemp(f"{algorithm}-{preset}")
            prepared = prepare_run("lora", run_values(algorithm, preset, subject_images, out, **extra))
            artifact = Path(train(prepared.options, prepared.method, prepared.resolved, prepared.family_options))
            runs[key] = (prepared.method, artifact)
        return runs[key]

    return run


def peft_merged_weights(method: LoraMethod) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base weight, weight merged by PEFT's own `merge`) of every adapted layer, by LoRA key."""
    base, merged = {}, {}
    for name, module in method.trainable_modules().items():
        module = copy.deepcopy(module)
        for path, layer in module.named_modules():
            if isinstance(layer, BaseTunerLayer) and ADAPTER_NAME in layer.r:
                key = f"{name}.{path.removeprefix('text_model.')}"
                base[key] = layer.get_base_layer().weight.detach().clone().float()
                layer.merge(adapter_names=[ADAPTER_NAME])
                merged[key] = layer.get_base_layer().weight.detach().clone().float()
    return base, merged


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_the_file_gives_the_weights_peft_trained_and_attaches_and_detaches_exactly(algorithm, preset, trained):
    method, artifact = trained(algorithm, preset)
    base, expected = peft_merged_weights(method)
    lora = read_lora_file(artifact).lora
    assert set(lora) == set(expected) and {module.algorithm for module in lora.values()} == {algorithm}
    assert any(not torch.equal(expected[key], base[key]) for key in expected), "training changed nothing"
    for key, module in lora.items():
        torch.testing.assert_close(module.merged(base[key], 1.0), expected[key], atol=1e-5, rtol=1e-4)

    pipeline = load_pipeline(preset)
    modules = adaptable_modules(pipeline)
    before = {key: module.weight.detach().clone() for key, module in modules.items()}
    _, handle = LoraMethod.attach(pipeline, [(artifact, 1.0)])
    for key in expected:
        torch.testing.assert_close(modules[key].weight.float(), expected[key], atol=1e-5, rtol=1e-4)
    LoraMethod.detach(pipeline, handle)
    assert all(torch.equal(module.weight, before[key]) for key, module in adaptable_modules(pipeline).items())


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_resuming_an_algorithm_run_is_bit_identical(algorithm, subject_images, tmp_path):
    def run(out: Path, **extra) -> dict[str, torch.Tensor]:
        prepared = prepare_run("lora", run_values(algorithm, "tiny-sd", subject_images, out, checkpoint_every=1, **extra))
        return load_file(train(prepared.options, prepared.method, prepared.resolved, prepared.family_options))

    straight = run(tmp_path / "straight")
    resumed = run(tmp_path / "resumed", resume=str(next((tmp_path / "straight").rglob("step-0000001"))))
    assert straight and set(straight) == set(resumed)
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)


def hand_delta(parts: dict[str, torch.Tensor], shape, scale: float | None = None) -> torch.Tensor:
    """The algorithms' formulas on a file's raw tensors, written out here apart from tunelab's reader (`scale`:
    a LoKr's, as a PEFT file's config gives it, instead of LyCORIS's rule)."""
    p = {name: tensor.double() for name, tensor in parts.items()}
    if "hada_w1_a" in p:
        rank = p["hada_w1_b"].shape[0]
        alpha = p["alpha"].item()
        return ((p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"]) * alpha / rank).reshape(shape)
    if "lokr_w1" in p or "lokr_w1_a" in p:
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"].flatten(1)
        low_rank = [p[name].shape[0] for name in ("lokr_w1_b", "lokr_w2_b") if name in p]
        if scale is None:
            scale = p["alpha"].item() / low_rank[0] if low_rank else 1.0
        kernel = shape[2:] if len(shape) == 4 else ()
        blocks = [[w1[i, j] * w2.reshape(w2.shape[0], -1) for j in range(w1.shape[1])] for i in range(w1.shape[0])]
        kron = torch.cat([torch.cat(row, dim=1) for row in blocks], dim=0)  # (a*b, c*d*kh*kw), block by block
        if kernel and "lokr_w2" in p:
            # w2 (b, d, kh, kw): each w1 entry scales a whole (b, d, kh, kw) block of the 4-d weight.
            kron = torch.cat([torch.cat([w1[i, j] * p["lokr_w2"] for j in range(w1.shape[1])], dim=1)
                              for i in range(w1.shape[0])], dim=0)
        return (kron * scale).reshape(shape)
    down, up = p["lora_down.weight"].flatten(1), p["lora_up.weight"].flatten(1)
    return (up @ down * p["alpha"].item() / down.shape[0]).reshape(shape)


def hand_merged(parts: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    merged = weight.double() + hand_delta(parts, weight.shape)
    if "dora_scale" not in parts:
        return merged
    scale = parts["dora_scale"].double()
    rows = scale.shape[0] == weight.shape[0]
    norm = merged.flatten(1).norm(dim=1) if rows else merged.transpose(0, 1).flatten(1).norm(dim=1)
    norm = norm.reshape(scale.shape)
    return merged * scale / norm


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("preset", ["tiny-sd", "tiny-sdxl"])
def test_lora_merge_equals_the_formula_on_the_files_tensors(algorithm, preset, trained, tmp_path):
    _, artifact = trained(algorithm, preset)
    tensors = load_file(artifact)
    out = tmp_path / "merged"
    assert run_cli("lora", "merge", "--model", preset, "--lora", artifact, "--out", out) == 0
    base_modules, merged_modules = adaptable_modules(load_pipeline(preset)), adaptable_modules(load_pipeline(str(out)))
    prefixes = kohya_prefixes(key.split(".", 1)[0] for key in base_modules)
    checked = 0
    for key, module in base_modules.items():
        name = kohya_name(key, prefixes, sgm=preset == "tiny-sdxl")
        parts = {part: tensors[f"{name}.{part}"] for part in
                 {k.partition(".")[2] for k in tensors if k.partition(".")[0] == name}}
        if not parts:
            assert torch.equal(merged_modules[key].weight, module.weight)
            continue
        expected = hand_merged(parts, module.weight.detach())
        torch.testing.assert_close(merged_modules[key].weight.double(), expected, atol=1e-5, rtol=1e-4)
        checked += 1
    assert checked == len({k.partition(".")[0] for k in tensors})


def flux_file_modules(modules: dict) -> dict[str, list[str]]:
    """kohya Flux module name -> the model's module keys it covers, in row order (q, k, v fused into one)."""
    named: dict[str, dict[int, str]] = {}
    for key in modules:
        component, path = key.split(".", 1)
        if component == "transformer":
            located = kohya_flux_module(path)
            if located is not None:
                named.setdefault(located[0], {})[located[1]] = key
        elif component == "text_encoder":  # CLIP-L; T5 takes no LoRA
            named.setdefault(kohya_name(key, {"text_encoder": "lora_te1"}), {})[0] = key
    return {name: [keys[index] for index in sorted(keys)] for name, keys in named.items()}


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_lora_merge_on_flux_equals_the_formula_on_the_files_tensors(algorithm, trained, tmp_path):
    """Flux: the kohya file's fused modules (q, k, v as one) by hand on the fused weights; a LoKr's PEFT file by
    PEFT's formula (scale alpha / r from the file's config)."""
    _, artifact = trained(algorithm, "tiny-flux")
    tensors = load_file(artifact)
    out = tmp_path / "merged"
    assert run_cli("lora", "merge", "--model", "tiny-flux", "--lora", artifact, "--out", out) == 0
    base, merged = adaptable_modules(load_pipeline("tiny-flux")), adaptable_modules(load_pipeline(str(out)))
    if algorithm == "lokr":
        with safe_open(artifact, "pt") as handle:
            packed = json.loads(handle.metadata()["lora_adapter_metadata"])
        groups = {}
        for key in tensors:
            module, _, part = key.rpartition(".")
            groups.setdefault(module, {})[part] = tensors[key]
        for module, parts in groups.items():
            component, path = module.split(".", 1)
            path = path.removeprefix("text_model.")
            rank = packed.get(f"{component}.rank_pattern", {}).get(path, packed[f"{component}.r"])
            alpha = packed.get(f"{component}.alpha_pattern", {}).get(path, packed[f"{component}.alpha"])
            weight = base[f"{component}.{path}"].weight.detach()
            expected = weight.double() + hand_delta(parts, weight.shape, scale=float(alpha) / rank)  # PEFT: alpha / r always
            torch.testing.assert_close(merged[f"{component}.{path}"].weight.double(), expected, atol=1e-5, rtol=1e-4)
        return
    names = flux_file_modules(base)
    file_modules = {key.partition(".")[0] for key in tensors}
    for name in file_modules:
        keys = names[name]
        parts = {key.partition(".")[2]: value for key, value in tensors.items() if key.partition(".")[0] == name}
        fused_base = torch.cat([base[key].weight.detach() for key in keys])  # (sum out, in)
        expected = hand_merged(parts, fused_base)
        torch.testing.assert_close(torch.cat([merged[key].weight for key in keys]).double(), expected, atol=1e-5, rtol=1e-4)
    covered = {key for name in file_modules for key in names[name]}
    assert all(torch.equal(merged[key].weight, module.weight) for key, module in base.items() if key not in covered)


def peft_config(packed: dict, component: str):
    fields = {key.partition(".")[2]: value for key, value in packed.items() if key.partition(".")[0] == component}
    kind = fields.pop("peft_type", "LORA")
    return {"LORA": LoraConfig, "LOHA": LoHaConfig, "LOKR": LoKrConfig}[kind](**fields)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("preset", ["tiny-sd", "tiny-sdxl", "tiny-flux"])
def test_a_peft_file_loads_in_peft_itself_and_gives_tunelabs_weights(algorithm, preset, trained):
    _, artifact = trained(algorithm, preset, format="peft")
    with safe_open(artifact, "pt") as handle:
        packed = json.loads(handle.metadata()["lora_adapter_metadata"])
    tensors = load_file(artifact)
    assert any(key.startswith(("unet.", "transformer.")) for key in tensors)

    ours = load_pipeline(preset)
    _, handle = LoraMethod.attach(ours, [(artifact, 1.0)])
    theirs = load_pipeline(preset)
    for component in sorted({key.partition(".")[0] for key in tensors}):
        module = getattr(theirs, component)
        inject_adapter_in_model(peft_config(packed, component), module, adapter_name=ADAPTER_NAME)
        state = {key.partition(".")[2]: value for key, value in tensors.items() if key.partition(".")[0] == component}
        if not any(path.startswith("text_model.") for path, _ in module.named_modules()):
            state = {key.removeprefix("text_model."): value for key, value in state.items()}
        result = set_peft_model_state_dict(module, state, adapter_name=ADAPTER_NAME)
        assert not [key for key in result.unexpected_keys if ADAPTER_NAME in key or "lora" in key]
        for path, layer in module.named_modules():  # PEFT's own merge: its weights, computed by PEFT
            if isinstance(layer, BaseTunerLayer) and ADAPTER_NAME in layer.r:
                layer.merge(adapter_names=[ADAPTER_NAME])
                key = f"{component}.{path.removeprefix('text_model.')}"
                torch.testing.assert_close(adaptable_modules(ours)[key].weight, layer.get_base_layer().weight, atol=1e-5, rtol=1e-4)
    LoraMethod.detach(ours, handle)


def test_kohya_metadata_and_info_name_the_algorithm(trained, capsys):
    _, artifact = trained("lokr", "tiny-sd")
    with safe_open(artifact, "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_network_module"] == "lycoris.kohya"
    args = json.loads(metadata["ss_network_args"])
    assert args["algo"] == "lokr" and args["factor"] == "-1" and args["decompose_both"] == "True" and args["conv_dim"] == "2"
    _, dora = trained("dora", "tiny-sd")
    with safe_open(dora, "pt") as handle:
        assert json.loads(handle.metadata()["ss_network_args"])["dora_wd"] == "True"
    assert run_cli("lora", "info", dora) == 0
    assert "algorithm   DoRA (all modules)" in capsys.readouterr().out


def test_lokr_full_factors_and_a_factor_train_as_lycoris_lays_them_out(trained, tmp_path, capsys):
    """--full-matrix: both Kronecker factors full (scale 1); --factor 4 on a 16 x 16 layer: w1 is 4 x 4, and at rank 1 w2 a pair. Each file holds PEFT's weights,
    and `lora convert` keeps the LoKr settings in ss_network_args."""
    for extra, parts in (({"full_matrix": True, "decompose_both": False}, {"lokr_w1", "lokr_w2", "alpha"}),
                         ({"factor": 4, "decompose_both": False, "rank": 1}, {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"})):
        method, artifact = trained("lokr", "tiny-sd", **extra)
        tensors = load_file(artifact)
        attention = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
        assert {key.partition(".")[2] for key in tensors if key.startswith(attention + ".")} == parts
        if "factor" in extra:
            assert tuple(tensors[f"{attention}.lokr_w1"].shape) == (4, 4)
        base, expected = peft_merged_weights(method)
        for key, module in read_lora_file(artifact).lora.items():
            torch.testing.assert_close(module.merged(base[key], 1.0), expected[key], atol=1e-5, rtol=1e-4)
    converted = tmp_path / "converted.safetensors"
    assert run_cli("lora", "convert", artifact, "--to", "kohya", "--precision", "fp16", "--out", converted) == 0
    with safe_open(converted, "pt") as handle:
        args = json.loads(handle.metadata()["ss_network_args"])
    assert args["algo"] == "lokr" and args["factor"] == "4"


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--algorithm", "lycon"], "invalid choice: 'lycon' (choose from 'lora', 'loha', 'lokr', 'dora')"),
        (["--algorithm", "loha", "--factor", "4"], "--factor applies to --algorithm lokr, not loha"),
        (["--algorithm", "lokr", "--factor", "0"], "--factor is -1 (balanced) or a positive divisor"),
        (["--algorithm", "lokr", "--decompose-both", "--full-matrix"], "contradict"),
        (["--algorithm", "loha", "--dropout", "0.1"], "--dropout applies to --algorithm lora and dora"),
        (["--conv-rank", "2"], "add conv to --targets"),
        (["--model", "tiny-flux", "--algorithm", "lokr", "--targets", "attention", "feedforward"], "write this LoRA with --format peft"),
    ],
)
def test_bad_algorithm_options_are_one_line(flags, message, subject_images, tmp_path, capsys):
    model = [] if "--model" in flags else ["--model", "tiny-sd"]
    try:
        code = run_cli("train", "lora", *model, "--images", subject_images, "--out", tmp_path, "--prompt", PROMPT,
                       "--steps", "1", "--log-with", "none", *flags)
    except SystemExit as exit:  # argparse refuses a value outside the choices itself
        code = exit.code
    error = capsys.readouterr().err
    assert code == 2 and message in error and len(error.strip().splitlines()) == 1, error
