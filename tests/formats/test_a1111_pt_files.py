"""The .pt files tunelab writes pass stock A1111's safe loader; torch's own do not."""

from __future__ import annotations

import pathlib

import torch
from a1111_safe_load_rules import a1111_refusals

from tunelab.formats.embedding import Embedding, read_embedding, write_embedding_pt
from tunelab.formats.pt_archive import torch_archive_bytes


def test_a_stock_torch_save_is_refused_and_the_rewritten_archive_passes(tmp_path):
    tree = {"string_to_param": {"*": torch.randn(2, 8)}, "name": "x", "step": 3}
    torch.save(tree, tmp_path / "stock.pt")
    (tmp_path / "ours.pt").write_bytes(torch_archive_bytes(tree))

    refused = a1111_refusals(tmp_path / "stock.pt")

    assert any(".format_version" in reason for reason in refused)
    assert any(".storage_alignment" in reason for reason in refused)
    assert a1111_refusals(tmp_path / "ours.pt") == []
    loaded = torch.load(tmp_path / "ours.pt", weights_only=True, mmap=True)
    assert torch.equal(loaded["string_to_param"]["*"], tree["string_to_param"]["*"]) and loaded["step"] == 3


def test_the_checker_refuses_a_forbidden_global(tmp_path):
    (tmp_path / "path.pt").write_bytes(torch_archive_bytes({"where": pathlib.PurePosixPath("/etc")}))

    assert a1111_refusals(tmp_path / "path.pt") == ["global pathlib.PurePosixPath is forbidden"]


def test_fp16_and_bf16_embeddings_pass_and_read_back(tmp_path):
    for dtype in (torch.float16, torch.bfloat16):
        vectors = torch.randn(3, 16).to(dtype)
        path = write_embedding_pt(Embedding({"text_encoder": vectors}, name="tok", step=5), tmp_path / f"{dtype}.pt")
        assert a1111_refusals(path) == []
        assert torch.equal(read_embedding(path).vectors["text_encoder"], vectors.float())
