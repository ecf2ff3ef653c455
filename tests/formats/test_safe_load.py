import os

import pytest
import torch
from safetensors.torch import save_file

from tunelab.errors import TunelabError
from tunelab.safe_load import load_state_dict, read_safetensors_metadata


class CreatesMarkerFileWhenUnpickled:
    """A pickle payload: unpickling it calls open(marker, "w"), i.e. runs code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_plain_tensor_dict_pt_loads(tmp_path):
    weights = {"layer.weight": torch.randn(3, 2), "layer.bias": torch.zeros(3)}
    torch.save(weights, tmp_path / "weights.pt")

    loaded = load_state_dict(tmp_path / "weights.pt")

    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[name], weights[name]) for name in weights)


def test_ckpt_with_state_dict_key_is_unwrapped(tmp_path):
    weights = {"model.diffusion_model.out.2.weight": torch.randn(4, 2, 3, 3)}
    torch.save({"state_dict": weights, "global_step": 1200, "epoch": 3}, tmp_path / "model.ckpt")

    loaded = load_state_dict(tmp_path / "model.ckpt")

    assert list(loaded) == ["model.diffusion_model.out.2.weight"]
    assert torch.equal(loaded["model.diffusion_model.out.2.weight"], weights["model.diffusion_model.out.2.weight"])


@pytest.mark.parametrize("extension", [".pt", ".ckpt", ".bin", ".pth"])
def test_pickle_payload_is_refused_without_running_it(tmp_path, extension):
    marker = tmp_path / "payload-ran"
    path = tmp_path / f"evil{extension}"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": CreatesMarkerFileWhenUnpickled(marker)}, path)

    with pytest.raises(TunelabError, match=r"refusing to load evil\S*: it contains Python objects other than tensors \(unsafe pickle\)"):
        load_state_dict(path)
    assert not marker.exists()


def test_safetensors_loads_with_metadata(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"a": torch.arange(6.0).reshape(2, 3)}, str(path), metadata={"trigger": "sks dog"})

    assert torch.equal(load_state_dict(path)["a"], torch.arange(6.0).reshape(2, 3))
    assert read_safetensors_metadata(path) == {"trigger": "sks dog"}


def test_safetensors_without_metadata_reads_as_empty(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"a": torch.zeros(1)}, str(path))

    assert read_safetensors_metadata(path) == {}


def test_corrupt_safetensors_is_refused(tmp_path):
    path = tmp_path / "broken.safetensors"
    header_length_past_end = (10**9).to_bytes(8, "little")
    path.write_bytes(header_length_past_end + os.urandom(64))

    with pytest.raises(TunelabError, match="broken.safetensors: not a valid .safetensors file"):
        load_state_dict(path)
    with pytest.raises(TunelabError, match="not a valid .safetensors file"):
        read_safetensors_metadata(path)


def test_truncated_torch_checkpoint_is_reported_as_damaged(tmp_path):
    whole = tmp_path / "whole.ckpt"
    torch.save({"w": torch.zeros(100)}, whole)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(whole.read_bytes()[:200])

    with pytest.raises(TunelabError, match="truncated.ckpt"):
        load_state_dict(truncated)


def test_missing_file_and_unknown_extension_are_clear_errors(tmp_path):
    with pytest.raises(TunelabError, match="weights file not found"):
        load_state_dict(tmp_path / "absent.safetensors")

    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"\0" * 16)
    with pytest.raises(TunelabError, match="unknown weights format '.npz'"):
        load_state_dict(odd)


def test_pickle_without_named_tensors_is_refused(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "bare.pt")
    torch.save({"step": 3}, tmp_path / "no-tensors.pt")

    with pytest.raises(TunelabError, match="not a dict of named tensors"):
        load_state_dict(tmp_path / "bare.pt")
    with pytest.raises(TunelabError, match="no tensors"):
        load_state_dict(tmp_path / "no-tensors.pt")


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    """A .safetensors file written by hand, so its header can lie."""
    import json

    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + data


@pytest.mark.parametrize(
    "case,header,data",
    [
        ("invalid JSON", None, b""),
        ("offsets past the end", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)),
        ("overlapping tensors", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
        ("shape that does not match the bytes", {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
        ("unknown dtype", {"w": {"dtype": "X99", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
    ],
)
def test_malformed_safetensors_are_refused_whole(tmp_path, case, header, data):
    path = tmp_path / "bad.safetensors"
    if header is None:
        path.write_bytes((5).to_bytes(8, "little") + b"{oops" + bytes(8))
    else:
        path.write_bytes(_safetensors_bytes(header, data))
    with pytest.raises(TunelabError, match="bad.safetensors: not a valid .safetensors file"):
        load_state_dict(path)
