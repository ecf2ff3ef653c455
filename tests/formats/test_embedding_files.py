"""Embedding files: A1111, kohya, diffusers and SDXL layouts read; tunelab's files in A1111/kohya layout."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tunelab.errors import TunelabError
from tunelab.formats.embedding import Embedding, read_embedding, write_embedding_pt, write_embedding_safetensors


def test_a1111_pt_reads_vectors_name_and_step(tmp_path):
    vectors = torch.randn(3, 768)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "charturner",
                "step": 4200, "sd_checkpoint": "925997e9", "sd_checkpoint_name": "sd-v1-5"}, tmp_path / "a.pt")

    embedding = read_embedding(tmp_path / "a.pt")

    assert torch.equal(embedding.vectors["text_encoder"], vectors)
    assert embedding.name == "charturner" and embedding.step == 4200 and embedding.n_vectors == 3


def test_kohya_safetensors_and_pt_read_emb_params(tmp_path):
    vectors = torch.randn(2, 1024, dtype=torch.float16)
    save_file({"emb_params": vectors}, str(tmp_path / "kohya.safetensors"))
    torch.save({"emb_params": vectors}, tmp_path / "kohya.pt")

    for name in ("kohya.safetensors", "kohya.pt"):
        embedding = read_embedding(tmp_path / name)
        assert embedding.vectors["text_encoder"].dtype == torch.float32
        assert torch.equal(embedding.vectors["text_encoder"], vectors.float()) and embedding.name is None


def test_diffusers_learned_embeds_read_the_token_from_the_key(tmp_path):
    vector = torch.randn(768)
    torch.save({"<cat-toy>": vector}, tmp_path / "learned_embeds.bin")
    save_file({"<cat-toy>": torch.stack([vector, vector])}, str(tmp_path / "learned_embeds.safetensors"))

    single = read_embedding(tmp_path / "learned_embeds.bin")
    double = read_embedding(tmp_path / "learned_embeds.safetensors")

    assert single.name == double.name == "<cat-toy>"
    assert single.vectors["text_encoder"].shape == (1, 768) and double.n_vectors == 2


def test_sdxl_files_map_clip_l_and_clip_g_to_the_two_encoders(tmp_path):
    clip_l, clip_g = torch.randn(2, 768), torch.randn(2, 1280)
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(tmp_path / "xl.safetensors"))

    embedding = read_embedding(tmp_path / "xl.safetensors")

    assert torch.equal(embedding.vectors["text_encoder"], clip_l) and torch.equal(embedding.vectors["text_encoder_2"], clip_g)
    write_embedding_pt(embedding, tmp_path / "xl.pt")
    assert set(torch.load(tmp_path / "xl.pt", weights_only=True)) == {"clip_l", "clip_g"}  # A1111 reads only these


def test_written_files_are_a1111_and_kohya_layouts_and_read_back(tmp_path):
    vectors = torch.randn(2, 32)
    embedding = Embedding({"text_encoder": vectors}, name="<sks-toy>", step=300)

    write_embedding_pt(embedding, tmp_path / "embedding.pt")
    write_embedding_safetensors(embedding, tmp_path / "embedding.safetensors", {"tunelab_method": "textual_inversion"})

    a1111 = torch.load(tmp_path / "embedding.pt", weights_only=True)
    assert torch.equal(a1111["string_to_param"]["*"], vectors)
    assert a1111["name"] == "<sks-toy>" and a1111["step"] == 300
    from safetensors import safe_open

    with safe_open(str(tmp_path / "embedding.safetensors"), "pt") as handle:
        assert list(handle.keys()) == ["emb_params"]
        assert handle.metadata() == {"tunelab_method": "textual_inversion", "name": "<sks-toy>", "step": "300"}
    for name in ("embedding.pt", "embedding.safetensors"):
        read = read_embedding(tmp_path / name)
        assert torch.equal(read.vectors["text_encoder"], vectors) and read.name == "<sks-toy>" and read.step == 300


def test_pickle_payload_embedding_is_refused_and_never_run(tmp_path):
    class CreatesMarkerFileWhenUnpickled:
        def __reduce__(self):
            return (open, (str(tmp_path / "payload-ran"), "w"))

    torch.save({"string_to_param": {"*": torch.zeros(1, 768)}, "name": CreatesMarkerFileWhenUnpickled()}, tmp_path / "evil.pt")

    with pytest.raises(TunelabError, match=r"refusing to load evil.pt: it contains Python objects other than tensors"):
        read_embedding(tmp_path / "evil.pt")
    assert not (tmp_path / "payload-ran").exists()


def test_files_that_are_not_embeddings_are_clear_errors(tmp_path):
    save_file({"a": torch.zeros(2, 8), "b": torch.zeros(2, 8)}, str(tmp_path / "two.safetensors"))
    save_file({"emb_params": torch.zeros(1, 2, 8)}, str(tmp_path / "cube.safetensors"))
    torch.save({"string_to_param": {"*": torch.zeros(1, 8), "+": torch.zeros(1, 8)}}, tmp_path / "two-terms.pt")

    with pytest.raises(TunelabError, match=r"two.safetensors: not a textual-inversion embedding .*found a, b"):
        read_embedding(tmp_path / "two.safetensors")
    with pytest.raises(TunelabError, match=r"cube.safetensors: embedding vectors must be a float tensor of shape \(n, dim\)"):
        read_embedding(tmp_path / "cube.safetensors")
    with pytest.raises(TunelabError, match="exactly one entry in string_to_param"):
        read_embedding(tmp_path / "two-terms.pt")
    with pytest.raises(TunelabError, match="weights file not found"):
        read_embedding(tmp_path / "absent.pt")


def test_non_finite_vectors_are_not_written(tmp_path):
    embedding = Embedding({"text_encoder": torch.tensor([[float("nan"), 0.0]])}, name="<x>")
    with pytest.raises(TunelabError, match="NaN or infinite"):
        write_embedding_pt(embedding, tmp_path / "bad.pt")
    assert not any(tmp_path.iterdir())
