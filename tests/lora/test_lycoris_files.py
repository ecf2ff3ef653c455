"""LoHa, LoKr and DoRA files that tunelab did not write: built with LyCORIS's own modules (the package A1111's and
ComfyUI's readers were written against) on tiny-sd's layers, then read, attached and merged by tunelab.

LyCORIS computes the expected weights (`get_merged_weight`), so the check is independent of tunelab's reader.
"""

from __future__ import annotations

import json

import pytest
import torch
from lycoris.modules.locon import LoConModule
from lycoris.modules.loha import LohaModule
from lycoris.modules.lokr import LokrModule

from helpers import run_cli
from lora_tool_helpers import denoiser_output
from tunelab.formats.kohya_lora import kohya_name, kohya_prefixes
from tunelab.formats.lora_io import read_lora_file
from tunelab.formats.safetensors_io import save_tensors
from tunelab.lora.modules import adaptable_modules
from tunelab.methods.lora import LoraMethod
from tunelab.models.presets import build_preset

LINEAR = "unet.up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj"  # (256, 32): room for two Kronecker factors
ATTENTION = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
CONV = "unet.down_blocks.1.resnets.0.conv1"  # 3x3
TEXT = "text_encoder.encoder.layers.0.self_attn.q_proj"

# name -> {module key: (LyCORIS class, its options)}
CASES = {
    "lokr-full": {LINEAR: (LokrModule, {"full_matrix": True, "lora_dim": 4, "alpha": 2})},
    "lokr-decomposed": {LINEAR: (LokrModule, {"decompose_both": True, "lora_dim": 2, "alpha": 1}),
                        TEXT: (LokrModule, {"lora_dim": 2, "alpha": 4, "factor": 4})},
    "lokr-conv": {CONV: (LokrModule, {"lora_dim": 2, "alpha": 1}),
                  "unet.down_blocks.1.resnets.0.conv2": (LokrModule, {"lora_dim": 2, "alpha": 1, "use_tucker": True})},
    "loha": {ATTENTION: (LohaModule, {"lora_dim": 4, "alpha": 2}), CONV: (LohaModule, {"lora_dim": 3, "alpha": 3}),
             "unet.down_blocks.1.resnets.0.conv2": (LohaModule, {"lora_dim": 2, "alpha": 1, "use_tucker": True}),
             TEXT: (LohaModule, {"lora_dim": 2, "alpha": 1})},
    "dora-output-axis": {ATTENTION: (LoConModule, {"lora_dim": 4, "alpha": 2, "weight_decompose": True, "wd_on_out": True}),
                         CONV: (LoConModule, {"lora_dim": 2, "alpha": 2, "weight_decompose": True, "wd_on_out": True})},
    "dora-input-axis": {ATTENTION: (LoConModule, {"lora_dim": 4, "alpha": 2, "weight_decompose": True, "wd_on_out": False}),
                        CONV: (LoConModule, {"lora_dim": 2, "alpha": 2, "weight_decompose": True, "wd_on_out": False}),
                        TEXT: (LoConModule, {"lora_dim": 2, "alpha": 1, "weight_decompose": True, "wd_on_out": False})},
    # LyCORIS's weight decomposition on its other algorithms (A1111 and ComfyUI read these too)
    "loha-dora": {ATTENTION: (LohaModule, {"lora_dim": 2, "alpha": 1, "weight_decompose": True, "wd_on_out": True})},
    "lokr-dora": {LINEAR: (LokrModule, {"lora_dim": 2, "alpha": 1, "weight_decompose": True, "wd_on_out": False})},
}


def lycoris_file(pipeline, case: str, path, seed: int = 0):
    """A LyCORIS file for `case` on the pipeline's layers (random factors, as after training), and the weights
    LyCORIS itself merges them into at multiplier 1."""
    generator = torch.Generator().manual_seed(seed)
    modules = adaptable_modules(pipeline)
    prefixes = kohya_prefixes(key.split(".", 1)[0] for key in modules)
    tensors, merged = {}, {}
    for key, (cls, options) in CASES[case].items():
        adapter = cls(kohya_name(key, prefixes), modules[key], **options)
        with torch.no_grad():
            for name, parameter in adapter.named_parameters():
                if name != "dora_scale":  # the magnitudes start as the base weight's norms; move them a little
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
                else:
                    parameter.mul_(1 + 0.1 * torch.rand(parameter.shape, generator=generator))
        tensors.update({f"{kohya_name(key, prefixes)}.{part}": value.detach().clone()
                        for part, value in adapter.state_dict().items()})
        merged[key] = lycoris_merged(adapter, modules[key].weight).detach().reshape(modules[key].weight.shape)
    metadata = {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": case.split("-")[0]})}
    return save_tensors(tensors, path, metadata), merged


def lycoris_merged(adapter, weight: torch.Tensor) -> torch.Tensor:
    """LyCORIS's merged weight at multiplier 1. For LoHa and LoKr, W + `get_weight` (the change, alpha / r applied):
    4.1.3's `get_diff_weight` multiplies by alpha / r a second time, which its bypass forward, A1111 and ComfyUI do not."""
    if isinstance(adapter, (LohaModule, LokrModule)):
        merged = weight + adapter.get_weight(tuple(weight.shape))
        return adapter.apply_weight_decompose(merged, 1) if adapter.wd else merged
    return adapter.get_merged_weight(multiplier=1, shape=tuple(weight.shape))[0]


def attached_weights(pipeline, path, weight: float = 1.0):
    _, handle = LoraMethod.attach(pipeline, [(path, weight)])
    modules = adaptable_modules(pipeline)
    return handle, {key: module.weight.detach().clone() for key, module in modules.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_lycoris_files_generate_what_lycoris_computes(case, tmp_path):
    pipeline = build_preset("tiny-sd")
    base = {key: module.weight.detach().clone() for key, module in adaptable_modules(pipeline).items()}
    before = denoiser_output(pipeline)
    path, expected = lycoris_file(pipeline, case, tmp_path / f"{case}.safetensors")
    assert set(read_lora_file(path).lora) == set(CASES[case])

    handle, weights = attached_weights(pipeline, path)
    attached = denoiser_output(pipeline)
    for key, value in weights.items():
        if key in expected:
            assert not torch.equal(value, base[key])
            torch.testing.assert_close(value, expected[key], atol=1e-5, rtol=1e-5)
        else:
            assert torch.equal(value, base[key]), f"{key} changed though the file does not hold it"

    reference = build_preset("tiny-sd")
    with torch.no_grad():
        for key, module in adaptable_modules(reference).items():
            if key in expected:
                module.weight.copy_(expected[key])
    torch.testing.assert_close(attached, denoiser_output(reference), atol=1e-5, rtol=1e-4)

    LoraMethod.detach(pipeline, handle)
    assert all(torch.equal(module.weight, base[key]) for key, module in adaptable_modules(pipeline).items())
    assert torch.equal(denoiser_output(pipeline), before)


def test_a_weight_scales_the_change_as_a1111_and_comfyui_do(tmp_path):
    """LoHa/LoKr: W + w delta. DoRA: W + w (W_dora - W), so weight 0 is the base model exactly."""
    pipeline = build_preset("tiny-sd")
    base = {key: module.weight.detach().clone() for key, module in adaptable_modules(pipeline).items()}
    for case in ("loha", "dora-input-axis"):
        path, expected = lycoris_file(pipeline, case, tmp_path / f"{case}.safetensors")
        for weight in (0.0, 0.4):
            handle, weights = attached_weights(pipeline, path, weight)
            for key in expected:
                torch.testing.assert_close(weights[key], base[key] + weight * (expected[key] - base[key]), atol=1e-5, rtol=1e-5)
                if weight == 0.0:
                    assert torch.equal(weights[key], base[key])
            LoraMethod.detach(pipeline, handle)


@pytest.mark.parametrize("case", ["lokr-decomposed", "loha", "dora-output-axis"])
def test_lora_merge_bakes_what_lycoris_computes(case, tmp_path):
    from tunelab.models.loading import load_pipeline

    path, expected = lycoris_file(build_preset("tiny-sd"), case, tmp_path / f"{case}.safetensors")
    assert run_cli("lora", "merge", "--model", "tiny-sd", "--lora", path, "--out", tmp_path / "merged") == 0
    merged = adaptable_modules(load_pipeline(str(tmp_path / "merged")))
    for key, weight in expected.items():
        torch.testing.assert_close(merged[key].weight, weight, atol=1e-5, rtol=1e-5)


def test_info_and_convert_know_the_algorithm(tmp_path, capsys):
    pipeline = build_preset("tiny-sd")
    path, expected = lycoris_file(pipeline, "lokr-decomposed", tmp_path / "lokr.safetensors")
    assert run_cli("lora", "info", path, "--modules") == 0
    text = capsys.readouterr().out
    assert "algorithm   LoKr (all modules)" in text and "LoKr" in text.splitlines()[-1]
    peft = tmp_path / "lokr-peft.safetensors"
    assert run_cli("lora", "convert", path, "--to", "peft", "--out", peft) == 0
    back = tmp_path / "lokr-back.safetensors"
    assert run_cli("lora", "convert", peft, "--to", "kohya", "--out", back) == 0
    capsys.readouterr()
    for converted in (peft, back):
        _, weights = attached_weights(build_preset("tiny-sd"), converted)
        for key in expected:
            torch.testing.assert_close(weights[key], expected[key], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tool", [("resize", "--rank", "2"), ("combine",)])
def test_resize_and_combine_refuse_the_other_algorithms_by_name(tool, tmp_path, capsys):
    path, _ = lycoris_file(build_preset("tiny-sd"), "loha", tmp_path / "loha.safetensors")
    assert run_cli("lora", tool[0], path, *tool[1:], "--out", tmp_path / "out.safetensors") == 2
    error = capsys.readouterr().err
    assert "holds LoHa modules" in error and f"lora {tool[0]} works on plain LoRA only" in error
    assert len(error.strip().splitlines()) == 1 and not (tmp_path / "out.safetensors").exists()


def test_bad_files_are_one_clear_line(tmp_path, capsys):
    name = kohya_name(ATTENTION, {"unet": "lora_unet"})
    mixed = save_tensors({f"{name}.lokr_w1": torch.ones(4, 4), f"{name}.lokr_w2": torch.ones(8, 8),
                          f"{name}.hada_w1_a": torch.ones(32, 2)}, tmp_path / "mixed.safetensors")
    assert run_cli("lora", "info", mixed) == 2
    error = capsys.readouterr().err
    assert "mixes LoHa (hada_w1_a) and LoKr" in error and len(error.strip().splitlines()) == 1

    # A LoKr whose Kronecker product is 6x6 where the model's to_q is 32x32.
    wrong = save_tensors({f"{name}.lokr_w1": torch.ones(2, 2), f"{name}.lokr_w2": torch.ones(3, 3)}, tmp_path / "wrong.safetensors")
    code = run_cli("generate", "--model", "tiny-sd", "--prompt", "a toy", "--steps", "1", "--lora", wrong, "--out", tmp_path / "x.png")
    error = capsys.readouterr().err
    assert code == 2 and "does not fit this model" in error and "(6, 6)" in error and len(error.strip().splitlines()) == 1

    incomplete = save_tensors({f"{name}.lokr_w1": torch.ones(4, 4), f"{name}.lokr_w2_a": torch.ones(8, 2)}, tmp_path / "part.safetensors")
    assert run_cli("lora", "info", incomplete) == 2
    assert "lacks lokr_w2_b; the file is incomplete" in capsys.readouterr().err


def test_a_grid_weight_and_a_plain_lora_alongside_keep_detach_exact(tmp_path):
    """A plain LoRA goes through diffusers' loader while a LoHa is merged into the weights; a grid cell's weight
    re-merges the LoHa at that weight, and detaching gives the base back bit for bit."""
    from types import SimpleNamespace

    from lora_tool_helpers import random_lora

    from tunelab.formats.lora_io import write_lora

    pipeline = build_preset("tiny-sd")
    modules = adaptable_modules(pipeline)
    base = {key: module.weight.detach().clone() for key, module in modules.items()}
    before = denoiser_output(pipeline)
    loha, expected = lycoris_file(pipeline, "loha", tmp_path / "loha.safetensors")
    plain = write_lora(random_lora(pipeline, ["unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k"], 2, 2.0),
                       tmp_path / "plain.safetensors", "kohya", {})
    entries, handle = LoraMethod.attach(pipeline, [(plain, 1.0), (loha, 1.0)])
    with_both = denoiser_output(pipeline)
    entries = LoraMethod.apply_generate_options(pipeline, entries, handle, SimpleNamespace(lora_weight=0.5))
    assert [weight for _, weight in entries] == [0.5, 0.5]
    for key in expected:
        torch.testing.assert_close(modules[key].weight, base[key] + 0.5 * (expected[key] - base[key]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(denoiser_output(pipeline), with_both)
    LoraMethod.detach(pipeline, handle)
    assert all(torch.equal(module.weight, base[key]) for key, module in adaptable_modules(pipeline).items())
    assert torch.equal(denoiser_output(pipeline), before)


@pytest.mark.parametrize("factor,splits", [(3, True), (-1, False)])
def test_a_fused_flux_lokr_splits_where_its_kronecker_blocks_allow(factor, splits, tmp_path, capsys):
    """kohya's Flux img_attn_qkv is q, k, v stacked: a LoKr whose w2 spans one of them (factor 3: w1 has 3 rows)
    splits exactly into three; one whose blocks straddle them is refused in one line."""
    pipeline = build_preset("tiny-flux")
    attention = pipeline.transformer.transformer_blocks[0].attn
    parts = [attention.to_q, attention.to_k, attention.to_v]
    fused = torch.nn.Linear(32, 96, bias=False)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([part.weight for part in parts]))  # (3 * 32, 32)
    adapter = LokrModule("lora_unet_double_blocks_0_img_attn_qkv", fused, lora_dim=2, alpha=1, factor=factor)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    path = save_tensors({f"lora_unet_double_blocks_0_img_attn_qkv.{part}": value.detach().clone()
                         for part, value in adapter.state_dict().items()}, tmp_path / "flux-lokr.safetensors")
    if not splits:
        assert run_cli("lora", "info", path) == 2
        error = capsys.readouterr().err
        assert "do not fall on its Kronecker blocks" in error and len(error.strip().splitlines()) == 1
        return
    expected = torch.split(lycoris_merged(adapter, fused.weight).detach(), 32)  # q, k, v rows
    _, handle = LoraMethod.attach(pipeline, [(path, 1.0)])
    for part, weight in zip(parts, expected):
        torch.testing.assert_close(part.weight, weight, atol=1e-5, rtol=1e-5)
    LoraMethod.detach(pipeline, handle)


def test_a_dora_file_converts_to_peft_and_reads_back_under_either_magnitude_key(tmp_path):
    """PEFT's DoRA magnitude is `lora_magnitude_vector` (older files: `.weight` after it); both read as the kohya file."""
    from safetensors import safe_open

    path, expected = lycoris_file(build_preset("tiny-sd"), "dora-output-axis", tmp_path / "dora.safetensors")
    peft = tmp_path / "dora-peft.safetensors"
    assert run_cli("lora", "convert", path, "--to", "peft", "--out", peft) == 0
    with safe_open(peft, "pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    assert any(key.endswith(".lora_magnitude_vector") for key in tensors)
    assert '"unet.use_dora": true' in metadata["lora_adapter_metadata"]
    older = save_tensors({key + (".weight" if key.endswith("magnitude_vector") else ""): value for key, value in tensors.items()},
                         tmp_path / "dora-older.safetensors", metadata)
    for converted in (peft, older):
        _, weights = attached_weights(build_preset("tiny-sd"), converted)
        for key in expected:
            torch.testing.assert_close(weights[key], expected[key], atol=1e-5, rtol=1e-5)
    # Magnitudes per input column have no place in PEFT's DoRA: said in one line, nothing written.
    column, _ = lycoris_file(build_preset("tiny-sd"), "dora-input-axis", tmp_path / "column.safetensors")
    assert run_cli("lora", "convert", column, "--to", "peft", "--out", tmp_path / "no.safetensors") == 2
    assert not (tmp_path / "no.safetensors").exists()


def test_diffusers_reads_a_peft_dora_as_tunelab_does_and_drops_a_kohya_ones_magnitudes(tmp_path):
    """What the README tells diffusers users: its loader reads DoRA in PEFT's layout right; from kohya's layout it
    keeps only the LoRA part (so it draws something else), and it refuses LoHa/LoKr."""
    path, _ = lycoris_file(build_preset("tiny-sd"), "dora-output-axis", tmp_path / "dora.safetensors")
    peft = tmp_path / "dora-peft.safetensors"
    assert run_cli("lora", "convert", path, "--to", "peft", "--out", peft) == 0
    ours = build_preset("tiny-sd")
    attached_weights(ours, peft)
    expected = denoiser_output(ours)
    outputs = []
    for file in (peft, path):
        theirs = build_preset("tiny-sd")
        theirs.load_lora_weights(str(file))
        outputs.append(denoiser_output(theirs))
    torch.testing.assert_close(outputs[0], expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(outputs[1], expected, atol=1e-3)
    loha, _ = lycoris_file(build_preset("tiny-sd"), "loha", tmp_path / "loha.safetensors")
    with pytest.raises(ValueError):
        build_preset("tiny-sd").load_lora_weights(str(loha))
