"""Hypernetworks on tiny-sd: A1111's forward on every attention, training, files, generation, errors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import run_cli
from tunelab.errors import TunelabError
from tunelab.generation.png_info import read_record
from tunelab.methods.hypernetwork import (
    HypernetworkMethod,
    HypernetworkOptions,
    attach_hypernetwork,
    attach_hypernetworks,
)
from tunelab.models.presets import build_preset
from tunelab.training.loop import train
from tunelab.training.options import TrainOptions

PROMPT = "a photo of sks toy"


def unet_output(pipeline) -> torch.Tensor:
    """The denoiser's prediction on a fixed input: compares two models exactly."""
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn((1, 4, 16, 16), generator=generator)  # (B, C, h, w)
    ids = pipeline.tokenizer([PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        text = pipeline.text_encoder(ids)[0]  # (1, 77, 32)
        return pipeline.unet(latents, torch.tensor([400]), encoder_hidden_states=text).sample


# --- A1111 files built by hand: state dicts of the MLP layer indices A1111 uses, no tunelab code ---

def _linear(generator, fan_in, fan_out):
    return torch.randn(fan_out, fan_in, generator=generator) * 0.4, torch.randn(fan_out, generator=generator) * 0.1


def _mlp_state(width, case, generator):
    """[1, 2, 1] MLP. relu: linear.0, ReLU, linear.2. tanh_norm (layer norm, activate output):
    linear.0, Tanh, LayerNorm linear.2, linear.3, Tanh, LayerNorm linear.5."""
    w0, b0 = _linear(generator, width, 2 * width)
    w1, b1 = _linear(generator, 2 * width, width)
    if case == "relu":
        return {"linear.0.weight": w0, "linear.0.bias": b0, "linear.2.weight": w1, "linear.2.bias": b1}
    def norm(size):  # LayerNorm (weight, bias)
        return 1 + 0.2 * torch.randn(size, generator=generator), 0.1 * torch.randn(size, generator=generator)

    (g0, n0), (g1, n1) = norm(2 * width), norm(width)
    return {"linear.0.weight": w0, "linear.0.bias": b0, "linear.2.weight": g0, "linear.2.bias": n0,
            "linear.3.weight": w1, "linear.3.bias": b1, "linear.5.weight": g1, "linear.5.bias": n1}


def _mlp_by_hand(state, case, x):
    """The MLP the file defines, written out."""
    hidden = x @ state["linear.0.weight"].T + state["linear.0.bias"]
    if case == "relu":
        return torch.relu(hidden) @ state["linear.2.weight"].T + state["linear.2.bias"]
    hidden = F.layer_norm(torch.tanh(hidden), hidden.shape[-1:], state["linear.2.weight"], state["linear.2.bias"])
    out = torch.tanh(hidden @ state["linear.3.weight"].T + state["linear.3.bias"])
    return F.layer_norm(out, out.shape[-1:], state["linear.5.weight"], state["linear.5.bias"])


def write_a1111_file(path, widths, case="relu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    modules = {width: (_mlp_state(width, case, generator), _mlp_state(width, case, generator)) for width in widths}
    options = {"relu": ("relu", False, False), "tanh_norm": ("tanh", True, True)}[case]
    torch.save({
        **modules,
        "step": 120, "name": "handmade", "layer_structure": [1, 2, 1], "activation_func": options[0],
        "is_layer_norm": options[1], "weight_initialization": "Normal", "sd_checkpoint": None,
        "sd_checkpoint_name": None, "activate_output": options[2], "use_dropout": False,
        "dropout_structure": [0, 0, 0], "last_layer_dropout": False, "optional_info": None,
    }, path)
    return modules


def _attention_by_hand(attention, hidden, context_k, context_v):
    """Scaled dot-product attention of a diffusers Attention, from its weights."""
    batch, tokens, _ = hidden.shape
    heads = attention.heads

    def split(x):  # (B, T, C) -> (B, heads, T, C / heads)
        return x.reshape(batch, x.shape[1], heads, -1).transpose(1, 2)

    q = split(hidden @ attention.to_q.weight.T)
    k = split(context_k @ attention.to_k.weight.T)
    v = split(context_v @ attention.to_v.weight.T)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (B, heads, T, T_ctx)
    merged = (weights @ v).transpose(1, 2).reshape(batch, tokens, -1)  # (B, T, C)
    return merged @ attention.to_out[0].weight.T + attention.to_out[0].bias


@pytest.mark.parametrize("widths,case", [((16,), "relu"), ((16, 32), "tanh_norm")])
def test_a1111_file_gives_the_formula_on_every_attention(tmp_path, widths, case):
    modules = write_a1111_file(tmp_path / "hand.pt", widths, case)
    strength = 0.7
    pipeline = build_preset("tiny-sd")
    attach_hypernetworks(pipeline, [(tmp_path / "hand.pt", strength)])

    captured = []  # (attention, hidden states, encoder hidden states or None, output)
    def capture(module, args, kwargs, output):
        captured.append((module, args[0], kwargs.get("encoder_hidden_states"), output))
    attentions = [m for m in pipeline.unet.modules() if type(m).__name__ == "Attention"]
    for attention in attentions:
        attention.register_forward_hook(capture, with_kwargs=True)
    unet_output(pipeline)

    assert len(captured) == len(attentions) == 8
    changed = 0
    with torch.no_grad():
        for attention, hidden, encoder_states, output in captured:
            context = hidden if encoder_states is None else encoder_states  # self-attention: its hidden states
            width = context.shape[-1]
            context_k = context_v = context
            if width in modules:
                k_state, v_state = modules[width]
                context_k = context + _mlp_by_hand(k_state, case, context) * strength
                context_v = context + _mlp_by_hand(v_state, case, context) * strength
                changed += 1
            torch.testing.assert_close(output, _attention_by_hand(attention, hidden, context_k, context_v), atol=2e-5, rtol=1e-4)
    # tiny-sd: self-attention at 16 (3 layers) and 32 (mid block), cross-attention at 32 (4 layers).
    assert changed == {(16,): 3, (16, 32): 8}[widths]


def test_strength_zero_and_detaching_give_the_base_model(tmp_path):
    write_a1111_file(tmp_path / "hand.pt", (16, 32))
    pipeline = build_preset("tiny-sd")
    base = unet_output(pipeline)
    (hooks,) = attach_hypernetworks(pipeline, [(tmp_path / "hand.pt", 0.0)])
    assert torch.equal(unet_output(pipeline), base)
    hooks.remove()
    (hooks,) = attach_hypernetworks(pipeline, [(tmp_path / "hand.pt", 1.0)])
    assert not torch.allclose(unet_output(pipeline), base, atol=1e-3)
    hooks.remove()
    assert torch.equal(unet_output(pipeline), base)


class RecordingHypernetworkMethod(HypernetworkMethod):
    """Keeps the weights as set up, to see that training moved them."""

    def setup(self, family):
        super().setup(family)
        self.initial = copy.deepcopy(self.hypernetwork.state_dict())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, subject_images):
    out = tmp_path_factory.mktemp("hypernetwork-run")
    options = TrainOptions(model="tiny-sd", images=str(subject_images), out=str(out), prompt=PROMPT, steps=6,
                           learning_rate=1e-2, log_with="none")
    method = RecordingHypernetworkMethod(HypernetworkOptions(activation="relu", layer_norm=True, name="toy"))
    train(options, method, {"technique": "hypernetwork"})
    return method, out


def test_training_changes_only_the_hypernetwork(trained):
    method, _ = trained
    pipeline, fresh = method.family.pipeline, build_preset("tiny-sd")
    for component in ("unet", "text_encoder", "vae"):
        trained_state, base_state = getattr(pipeline, component).state_dict(), getattr(fresh, component).state_dict()
        assert trained_state.keys() == base_state.keys()
        assert all(torch.equal(value, base_state[name]) for name, value in trained_state.items()), component
    assert method.hypernetwork.widths == [16, 32]  # every attention context width of tiny-sd by default
    moved = [name for name, value in method.hypernetwork.state_dict().items() if not torch.equal(value, method.initial[name])]
    assert len(moved) == len(method.initial) == 2 * 2 * 8  # (K, V) x 2 widths x (2 linears + 2 norms) x (weight, bias)

    assert not torch.equal(unet_output(pipeline), unet_output(fresh))
    method.hooks.remove()
    try:
        assert torch.equal(unet_output(pipeline), unet_output(fresh))
    finally:
        method.hooks = attach_hypernetwork(pipeline.unet, method.hypernetwork)


def test_saved_files_are_a1111_layout_and_reproduce_the_trained_model(trained):
    method, out = trained
    saved = torch.load(out / "hypernetwork.pt", weights_only=True)
    assert sorted(k for k in saved if isinstance(k, int)) == [16, 32]
    k_state, v_state = saved[16]
    # relu + layer norm: Linear, ReLU, LayerNorm, Linear, LayerNorm
    assert sorted(k_state) == sorted(v_state) == ["linear.0.bias", "linear.0.weight", "linear.2.bias", "linear.2.weight",
                                                  "linear.3.bias", "linear.3.weight", "linear.4.bias", "linear.4.weight"]
    assert k_state["linear.0.weight"].shape == (32, 16) and k_state["linear.3.weight"].shape == (16, 32)
    assert saved["layer_structure"] == [1.0, 2.0, 1.0] and saved["activation_func"] == "relu"
    assert saved["is_layer_norm"] is True and saved["activate_output"] is False and saved["use_dropout"] is False
    assert saved["weight_initialization"] == "Normal" and saved["name"] == "toy" and saved["step"] == 6

    from safetensors import safe_open

    with safe_open(str(out / "hypernetwork.safetensors"), "pt") as handle:
        metadata, keys = handle.metadata(), list(handle.keys())
    assert "16.k.linear.0.weight" in keys and "32.v.linear.4.bias" in keys
    assert metadata["activation_func"] == "relu" and metadata["is_layer_norm"] == "true"

    method.hypernetwork.eval()
    expected = unet_output(method.family.pipeline)
    fresh = build_preset("tiny-sd")
    base = unet_output(fresh)
    for name in ("hypernetwork.pt", "hypernetwork.safetensors"):
        (hooks,) = attach_hypernetworks(fresh, [(out / name, 1.0)])
        assert torch.equal(unet_output(fresh), expected), name
        hooks.remove()
    assert torch.equal(unet_output(fresh), base)


def test_resumed_run_with_dropout_learns_the_same_hypernetwork(tmp_path, subject_images):
    from dataclasses import replace

    from safetensors.torch import load_file

    base = TrainOptions(model="tiny-sd", images=str(subject_images), out="", prompt=PROMPT, steps=5,
                        learning_rate=1e-2, log_with="none", checkpoint_every=1)

    def run(out, **overrides):
        method = HypernetworkMethod(HypernetworkOptions(layer_structure=[1, 2, 2, 1], activation="elu", use_dropout=True))
        return load_file(train(replace(base, out=str(tmp_path / out), **overrides), method, {}))

    straight = run("straight")
    run("stopped", steps=3)
    resumed = run("stopped", resume="latest")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_generate_with_hypernetwork_strength_zero_is_the_base_image(tmp_path):
    write_a1111_file(tmp_path / "hand.pt", (16, 32))
    common = ["generate", "--model", "tiny-sd", "--prompt", PROMPT, "--steps", "3", "--sampler", "ddim", "--seed", "2"]
    assert run_cli(*common, "--out", tmp_path / "base.png") == 0
    assert run_cli(*common, "--hypernetwork", f"{tmp_path / 'hand.pt'}:0", "--out", tmp_path / "zero.png") == 0
    assert run_cli(*common, "--hypernetwork", f"{tmp_path / 'hand.pt'}:0.8", "--out", tmp_path / "on.png") == 0
    pixels = {name: np.asarray(Image.open(tmp_path / f"{name}.png")).astype(np.int16) for name in ("base", "zero", "on")}
    assert np.array_equal(pixels["zero"], pixels["base"])
    assert np.abs(pixels["on"] - pixels["base"]).max() > 0
    assert read_record(tmp_path / "on.png")["hypernetworks"] == [[str(tmp_path / "hand.pt"), 0.8]]
    assert "Hypernet: hand, Hypernet strength: 0.8" in Image.open(tmp_path / "on.png").text["parameters"]


def test_file_for_other_widths_is_a_clear_error(tmp_path, capsys):
    write_a1111_file(tmp_path / "sd15.pt", (768, 320, 640, 1280))
    code = run_cli("generate", "--model", "tiny-sd", "--prompt", PROMPT, "--steps", "1",
                   "--hypernetwork", tmp_path / "sd15.pt", "--out", tmp_path / "x.png")
    assert code == 2
    assert ("sd15.pt has modules for context widths 320, 640, 768, 1280, but this model's attention contexts are 16, 32"
            in capsys.readouterr().err)


def test_pickle_payload_hypernetwork_is_refused_and_never_run(tmp_path, capsys):
    class CreatesMarkerFileWhenUnpickled:
        def __reduce__(self):
            return (open, (str(tmp_path / "payload-ran"), "w"))

    torch.save({16: ({}, {}), "layer_structure": [1, 2, 1], "extra": CreatesMarkerFileWhenUnpickled()}, tmp_path / "evil.pt")
    code = run_cli("generate", "--model", "tiny-sd", "--prompt", PROMPT, "--steps", "1",
                   "--hypernetwork", tmp_path / "evil.pt", "--out", tmp_path / "x.png")
    assert code == 2
    assert "refusing to load evil.pt: it contains Python objects other than tensors" in capsys.readouterr().err
    assert not (tmp_path / "payload-ran").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--context-widths", "768"], "--context-widths 768: no attention of this model has that context width (it has 16, 32)"),
        (["--layer-structure", "2", "1"], "--layer-structure must start and end with 1"),
    ],
)
def test_bad_training_options_are_clear_errors(tmp_path, subject_images, capsys, args, message):
    code = run_cli("train", "hypernetwork", "--model", "tiny-sd", "--images", subject_images, "--prompt", PROMPT,
                   "--out", tmp_path, "--steps", "1", "--log-with", "none", *args)
    assert code == 2
    assert message in capsys.readouterr().err


def test_dropout_takes_its_place_in_the_a1111_layer_indices(tmp_path):
    from tunelab.methods.hypernetwork import load_hypernetwork

    # [1, 2, 2, 1], linear activation, use_dropout: Linear 0, Dropout 1, Linear 2, Linear 3.
    generator = torch.Generator().manual_seed(1)
    shapes = {0: (32, 16), 2: (32, 32), 3: (16, 32)}
    state = {f"linear.{i}.{kind}": torch.randn(*(shape if kind == "weight" else shape[:1]), generator=generator)
             for i, shape in shapes.items() for kind in ("weight", "bias")}
    torch.save({16: (state, state), "layer_structure": [1, 2, 2, 1], "activation_func": "linear",
                "use_dropout": True, "last_layer_dropout": False}, tmp_path / "dropout.pt")

    hypernetwork = load_hypernetwork(tmp_path / "dropout.pt", build_preset("tiny-sd").unet).eval()

    x = torch.randn(2, 5, 16, generator=generator)
    expected = x
    for i in (0, 2, 3):
        expected = expected @ state[f"linear.{i}.weight"].T + state[f"linear.{i}.bias"]
    torch.testing.assert_close(hypernetwork.k["16"](x), expected)
    assert [type(layer).__name__ for layer in hypernetwork.k["16"].linear] == ["Linear", "Dropout", "Linear", "Linear"]


def test_mismatched_module_is_a_clear_error(tmp_path):
    from tunelab.methods.hypernetwork import load_hypernetwork

    write_a1111_file(tmp_path / "hand.pt", (16,))
    saved = torch.load(tmp_path / "hand.pt", weights_only=True)
    saved["layer_structure"] = [1, 3, 1]  # the stored weights are for [1, 2, 1]
    torch.save(saved, tmp_path / "wrong.pt")
    with pytest.raises(TunelabError, match=r"wrong.pt: the module for width 16 does not match its layer_structure"):
        load_hypernetwork(tmp_path / "wrong.pt", build_preset("tiny-sd").unet)
