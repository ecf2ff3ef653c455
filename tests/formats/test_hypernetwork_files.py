"""A1111 hypernetwork files: read as A1111 writes them, written so A1111 reads them, .safetensors beside."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.formats.hypernetwork import (
    HypernetworkFile,
    HypernetworkStructure,
    read_hypernetwork,
    write_hypernetwork_pt,
    write_hypernetwork_safetensors,
)


def _pair(width: int, indices=(0, 2)):
    def state():
        return OrderedDict(
            (f"linear.{i}.{kind}", torch.randn(*shape))
            for i, (rows, cols) in zip(indices, ((2 * width, width), (width, 2 * width)))
            for kind, shape in (("weight", (rows, cols)), ("bias", (rows,)))
        )

    return (state(), state())


def test_reads_an_a1111_file_as_a1111_saves_it(tmp_path):
    modules = {768: _pair(768), 320: _pair(320)}
    torch.save({**modules, "step": 2000, "name": "anime", "layer_structure": [1.0, 2.0, 1.0], "activation_func": "relu",
                "is_layer_norm": False, "weight_initialization": "XavierNormal", "sd_checkpoint": "e1441589",
                "sd_checkpoint_name": "v1-5", "activate_output": False, "use_dropout": True,
                "dropout_structure": [0, 0, 0], "last_layer_dropout": False, "optional_info": None}, tmp_path / "anime.pt")

    read = read_hypernetwork(tmp_path / "anime.pt")

    assert sorted(read.modules) == [320, 768] and read.name == "anime" and read.step == 2000
    assert read.structure.activation_func == "relu" and read.structure.weight_initialization == "XavierNormal"
    assert read.structure.use_dropout is True and read.structure.dropouts() == [0, 0, 0]
    for width, pair in modules.items():
        for read_state, state in zip(read.modules[width], pair):
            assert read_state.keys() == state.keys() and all(torch.equal(read_state[k], state[k]) for k in state)


def test_missing_options_take_a1111_defaults_and_old_key_names_are_renamed(tmp_path):
    old = {"linear1.weight": torch.randn(1536, 768), "linear1.bias": torch.randn(1536),
           "linear2.weight": torch.randn(768, 1536), "linear2.bias": torch.randn(768)}
    torch.save({768: (old, old)}, tmp_path / "old.pt")

    read = read_hypernetwork(tmp_path / "old.pt")

    assert read.structure == HypernetworkStructure(activate_output=True)  # linear, [1, 2, 1], no norm or dropout
    assert sorted(read.modules[768][0]) == ["linear.0.bias", "linear.0.weight", "linear.1.bias", "linear.1.weight"]


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_keeps_weights_and_options(tmp_path, suffix):
    structure = HypernetworkStructure(
        layer_structure=[1.0, 2.0, 2.0, 1.0], activation_func="swish", is_layer_norm=True,
        weight_initialization="KaimingUniform", use_dropout=True, last_layer_dropout=True, activate_output=True,
    )
    original = HypernetworkFile(structure, {16: _pair(16), 32: _pair(32)}, name="toy", step=77)
    path = tmp_path / f"toy{suffix}"
    if suffix == ".pt":
        write_hypernetwork_pt(original, path)
    else:
        write_hypernetwork_safetensors(original, path, {"tunelab_method": "hypernetwork"})

    read = read_hypernetwork(path)

    assert read.name == "toy" and read.step == 77
    assert read.structure.dropouts() == [0.0, 0.3, 0.3, 0.0]  # A1111's dropout after hidden layers
    assert (read.structure.layer_structure, read.structure.activation_func) == ([1.0, 2.0, 2.0, 1.0], "swish")
    assert read.structure.is_layer_norm and read.structure.activate_output
    assert read.structure.weight_initialization == "KaimingUniform"
    for width, pair in original.modules.items():
        for read_state, state in zip(read.modules[width], pair):
            assert all(torch.equal(read_state[k], state[k]) for k in state) and read_state.keys() == state.keys()


def test_written_pt_is_what_a1111_loads(tmp_path):
    original = HypernetworkFile(HypernetworkStructure(activate_output=False), {768: _pair(768)}, name="x", step=5)
    write_hypernetwork_pt(original, tmp_path / "x.pt")

    saved = torch.load(tmp_path / "x.pt", weights_only=True)  # A1111 iterates int keys for the (K, V) pairs

    assert [key for key in saved if isinstance(key, int)] == [768]
    assert isinstance(saved[768], tuple) and len(saved[768]) == 2
    assert {key: saved[key] for key in ("layer_structure", "activation_func", "is_layer_norm", "use_dropout",
                                        "activate_output", "weight_initialization", "step", "name")} == {
        "layer_structure": [1.0, 2.0, 1.0], "activation_func": "linear", "is_layer_norm": False, "use_dropout": False,
        "activate_output": False, "weight_initialization": "Normal", "step": 5, "name": "x"}


def test_pickle_payload_is_refused_and_never_run(tmp_path):
    class CreatesMarkerFileWhenUnpickled:
        def __reduce__(self):
            return (open, (str(tmp_path / "payload-ran"), "w"))

    torch.save({768: _pair(768), "optional_info": CreatesMarkerFileWhenUnpickled()}, tmp_path / "evil.pt")

    with pytest.raises(TunelabError, match="refusing to load evil.pt: it contains Python objects other than tensors"):
        read_hypernetwork(tmp_path / "evil.pt")
    assert not (tmp_path / "payload-ran").exists()


def test_malformed_files_are_clear_errors(tmp_path):
    torch.save({768: _pair(768), "layer_structure": [2, 1]}, tmp_path / "structure.pt")
    torch.save({"step": 3, "name": "empty"}, tmp_path / "empty.pt")
    torch.save({768: (_pair(768)[0],)}, tmp_path / "half.pt")
    torch.save({768: _pair(768), "is_layer_norm": "yes"}, tmp_path / "option.pt")

    with pytest.raises(TunelabError, match=r"structure.pt: layer_structure must start and end with 1, got \[2, 1\]"):
        read_hypernetwork(tmp_path / "structure.pt")
    with pytest.raises(TunelabError, match="empty.pt: not a hypernetwork file"):
        read_hypernetwork(tmp_path / "empty.pt")
    with pytest.raises(TunelabError, match="half.pt: entry 768 must be a \\(K, V\\) pair"):
        read_hypernetwork(tmp_path / "half.pt")
    with pytest.raises(TunelabError, match="option.pt: is_layer_norm must be bool"):
        read_hypernetwork(tmp_path / "option.pt")
