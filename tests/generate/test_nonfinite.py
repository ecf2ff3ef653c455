"""A rendered image with NaN/inf pixels is one clear error, never a black PNG written with exit 0."""

from __future__ import annotations

import pytest
import torch

from helpers import one_line_error, run_cli

from tunelab.models.presets import build_preset, final_norm


def test_a_nan_image_is_an_error_and_no_file_is_written(tmp_path, capsys):
    # A LoRA weight that is finite as a number but overflows float32 in the weights makes NaN pixels.
    path = lora_file(tmp_path / "toy.safetensors")
    assert run_cli("generate", "--model", "tiny-sd", "--prompt", "a photo of sks toy", "--lora", f"{path}:1e38",
                   "--steps", "2", "--out", tmp_path / "x.png") == 2
    err = capsys.readouterr().err
    assert "the model produced NaN/inf pixels for seed 0: no image written" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_prompt_weights_that_cancel_out_are_an_error_not_a_black_image(tmp_path, capsys):
    # A text encoder whose final norm has no bias gives zero-mean vectors: A1111's mean restoration then divides
    # rounding noise by rounding noise (NaN on one CPU, a flipped sign on another; A1111 shows black or garbage).
    pipeline = build_preset("tiny-sd")
    with torch.no_grad():
        final_norm(pipeline.text_encoder).bias.zero_()
    pipeline.save_pretrained(tmp_path / "model")
    assert run_cli("generate", "--model", tmp_path / "model", "--prompt", "a photo of sks toy", "--negative-prompt",
                   "[blurry]", "--steps", "2", "--out", tmp_path / "x.png") == 2
    err = capsys.readouterr().err
    assert "the prompt's weights cancel out on this model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()
    # The shipped tiny model's encoder is not degenerate: the same prompt renders.
    assert run_cli("generate", "--model", "tiny-sd", "--prompt", "a photo of sks toy", "--negative-prompt",
                   "[blurry]", "--steps", "2", "--out", tmp_path / "x.png") == 0


# Issue 16's "wrong results with exit 0": each non-finite input is refused by name before anything renders.

TO_Q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # tiny-sd: 16 -> 16


def lora_file(path, alpha=2.0, up_scale=1.0, rank=2):
    import torch

    from tunelab.formats.lora_io import write_lora
    from tunelab.formats.lora_set import LoraModule

    generator = torch.Generator().manual_seed(0)
    module = LoraModule(torch.randn(rank, 16, generator=generator), torch.randn(16, rank, generator=generator) * up_scale, alpha)
    write_lora({TO_Q: module}, path, "kohya", {})
    return path


def tensors_changed(path, change):
    """Rewrite a file's tensors through `change(key, tensor)`: how a broken file from elsewhere looks (tunelab's
    own writer refuses NaN)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as reader:
        metadata = reader.metadata()
    save_file({key: change(key, tensor) for key, tensor in load_file(str(path)).items()}, str(path), metadata)
    return path


GENERATE = ["generate", "--model", "tiny-sd", "--prompt", "a photo of sks toy", "--steps", "1"]


@pytest.mark.parametrize("part,value", [("alpha", float("nan")), ("lora_up.weight", float("inf"))])
def test_a_lora_file_with_non_finite_values_is_refused_naming_the_tensor(part, value, tmp_path, capsys):
    path = tensors_changed(lora_file(tmp_path / "broken.safetensors"),
                           lambda key, tensor: tensor.fill_(value) if key.endswith(part) else tensor)
    err = one_line_error(capsys, run_cli(*GENERATE, "--lora", path, "--out", tmp_path / "x.png"))
    assert f"broken.safetensors: tensor lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.{part} holds NaN" in err
    assert not (tmp_path / "x.png").exists()


def test_non_finite_lora_weights_in_flags_and_tags_are_refused(tmp_path, capsys):
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    path = lora_file(adapters / "toy.safetensors")
    err = one_line_error(capsys, run_cli(*GENERATE, "--lora", f"{path}:nan", "--out", tmp_path / "x.png"))
    assert "toy.safetensors:nan: the weight nan is not a finite number" in err
    for tag in ("<lora:toy:nan>", "<lora:toy:1:inf>", "<lora:toy:te=-inf>"):
        err = one_line_error(capsys, run_cli("generate", "--model", "tiny-sd", "--prompt", f"a toy {tag}", "--adapters-dir",
                                             adapters, "--steps", "1", "--out", tmp_path / "x.png"))
        assert f"prompt tag {tag}: a weight is not a finite number" in err


def test_a_rank_zero_lora_is_one_line_in_every_tool(tmp_path, capsys):
    path = tensors_changed(lora_file(tmp_path / "empty.safetensors"),
                           lambda key, tensor: tensor[:0] if key.endswith("down.weight") else tensor[:, :0] if key.endswith("up.weight") else tensor)
    for command in (["lora", "info", path], ["lora", "resize", path, "--rank", "1", "--out", tmp_path / "r.safetensors"],
                    [*GENERATE, "--lora", path, "--out", tmp_path / "x.png"]):
        err = one_line_error(capsys, run_cli(*command))
        assert "has rank 0 (an empty lora_down): it holds no change" in err


def test_an_embedding_with_non_finite_vectors_is_refused(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    save_file({"emb_params": torch.tensor([[float("nan")] * 16])}, str(tmp_path / "toy.safetensors"))
    err = one_line_error(capsys, run_cli(*GENERATE, "--embedding", f"{tmp_path / 'toy.safetensors'}:<toy>", "--out", tmp_path / "x.png"))
    assert "toy.safetensors: embedding vectors hold NaN or infinite values" in err


@pytest.mark.parametrize("prompt,message", [
    ("a (toy:" + "9" * 400 + ")", "prompt weight ':999999999...999999999)': weights go from -100 to 100"),
    ("a (toy:-1000)", "prompt weight ':-1000)': weights go from -100 to 100"),
    ("a " + "(" * 60 + "toy", "prompt text 'toy' gets weight 304 from nested brackets"),
    ("a (toy:.)", "prompt weight ':.)': '.' is not a number"),
])
def test_prompt_weights_are_finite_and_bounded(prompt, message, tmp_path, capsys):
    err = one_line_error(capsys, run_cli("generate", "--model", "tiny-sd", "--prompt", prompt, "--steps", "1", "--out", tmp_path / "x.png"))
    assert message in err


def test_unbalanced_brackets_render_a_finite_image(tmp_path):
    for index, prompt in enumerate(["a ((((toy", "a toy)) (car] [x"]):
        assert run_cli(*GENERATE[:3], "--prompt", prompt, "--steps", "1", "--out", tmp_path / f"{index}.png") == 0


@pytest.mark.parametrize("flags,message", [
    (["--width", "33"], "--width must be a positive multiple of 8 (the VAE's scale), got 33"),
    (["--height", "0"], "--height must be a positive multiple of 8"),
])
def test_image_sizes_are_checked_before_loading(flags, message, tmp_path, capsys):
    assert message in one_line_error(capsys, run_cli(*GENERATE, *flags, "--out", tmp_path / "x.png"))


@pytest.mark.parametrize("where,message", [("file", "is a folder; give a .png file name"), ("under a file", "afile is a file, not a folder"),
                                           ("root", "is the file-system root")])
def test_an_out_that_cannot_be_written_is_one_line(where, message, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "folder.png").mkdir()
    out = {"file": tmp_path / "folder.png", "under a file": tmp_path / "afile" / "x.png", "root": "/"}[where]
    count = ["--count", "2"] if where == "root" else []
    assert message in one_line_error(capsys, run_cli(*GENERATE, *count, "--out", out))
