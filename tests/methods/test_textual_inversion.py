"""Textual Inversion on tiny-sd: only the new rows train, the files load in diffusers as in tunelab generate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run_cli
from tunelab.generation.png_info import read_record
from tunelab.methods.textual_inversion import TEMPLATES, TextualInversionMethod, TextualInversionOptions
from tunelab.models.presets import build_preset
from tunelab.models.sd import StableDiffusionFamily
from tunelab.training.loop import train
from tunelab.training.options import TrainOptions

TOKEN = "<sks-toy>"
PROMPT = f"a photo of {TOKEN}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, subject_images):
    """Two vectors trained for 6 steps; images have no captions, so the templates are used."""
    out = tmp_path_factory.mktemp("ti-run")
    options = TrainOptions(model="tiny-sd", images=str(subject_images), out=str(out), steps=6,
                           learning_rate=5e-2, weight_decay=0.1, log_with="none")
    method = TextualInversionMethod(TextualInversionOptions(token=TOKEN, init_word="toy", vectors=2))
    train(options, method, {"technique": "textual_inversion"})
    return method, out


def test_only_the_new_embedding_rows_change(trained):
    method, _ = trained
    pipeline, fresh = method.family.pipeline, build_preset("tiny-sd")
    base_rows = fresh.text_encoder.get_input_embeddings().weight  # (V, 32)
    rows = pipeline.text_encoder.get_input_embeddings().weight  # (V + 2, 32)
    vocabulary = base_rows.shape[0]
    new_ids = pipeline.tokenizer.convert_tokens_to_ids([TOKEN, f"{TOKEN}_1"])
    assert new_ids == [vocabulary, vocabulary + 1] and rows.shape == (vocabulary + 2, 32)
    assert torch.equal(rows[:vocabulary], base_rows), "a vocabulary row changed"
    toy_row = base_rows[pipeline.tokenizer.convert_tokens_to_ids("toy</w>")]
    assert all((rows[i] - toy_row).abs().max() > 1e-3 for i in new_ids), "the new rows did not train"

    for component in ("text_encoder", "unet", "vae"):
        base_state = getattr(fresh, component).state_dict()
        for name, value in getattr(pipeline, component).state_dict().items():
            if not name.endswith("token_embedding.weight"):  # compared row by row above
                assert torch.equal(value, base_state[name]), f"{component}.{name} changed"


def test_vectors_start_from_the_init_word_and_captions_get_templates():
    pipeline = build_preset("tiny-sd")
    toy_row = pipeline.text_encoder.get_input_embeddings().weight[pipeline.tokenizer.convert_tokens_to_ids("toy</w>")].clone()
    vocabulary = len(pipeline.tokenizer)
    method = TextualInversionMethod(TextualInversionOptions(token=TOKEN, init_word="toy", vectors=2))
    method.setup(StableDiffusionFamily(pipeline))
    rows = pipeline.text_encoder.get_input_embeddings().weight
    assert torch.equal(rows[vocabulary], toy_row) and torch.equal(rows[vocabulary + 1], toy_row)

    templated, kept, described = method.training_captions([TOKEN, f"a {TOKEN} on grass", "a red disc"])
    expanded = f"{TOKEN} {TOKEN}_1"
    assert templated in {t.format(expanded) for t in TEMPLATES["object"]}
    assert kept == f"a {expanded} on grass"
    head, tail = described.split(", ")
    assert head in {t.format(expanded) for t in TEMPLATES["object"]} and tail == "a red disc"

    # An init word of several tokens starts one vector from each when --vectors matches.
    pipeline = build_preset("tiny-sd")
    ids = pipeline.tokenizer("red dog", add_special_tokens=False).input_ids
    expected = pipeline.text_encoder.get_input_embeddings().weight[ids].clone()  # (2, 32)
    TextualInversionMethod(TextualInversionOptions(token="<x>", init_word="red dog", vectors=2)).setup(StableDiffusionFamily(pipeline))
    assert torch.equal(pipeline.text_encoder.get_input_embeddings().weight[vocabulary : vocabulary + 2], expected)


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int16)


def _diffusers_image(load):
    from diffusers import DDIMScheduler

    pipeline = build_preset("tiny-sd")
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    load(pipeline)
    image = pipeline(PROMPT, num_inference_steps=4, guidance_scale=5, generator=torch.Generator().manual_seed(3)).images[0]
    return np.asarray(image).astype(np.int16)


def test_files_load_in_diffusers_and_give_the_image_of_tunelab_generate(trained, tmp_path):
    method, out = trained
    a1111 = torch.load(out / "embedding.pt", weights_only=True)
    assert a1111["name"] == TOKEN and a1111["step"] == 6
    vectors = a1111["string_to_param"]["*"]  # (2, 32)
    rows = method.family.pipeline.text_encoder.get_input_embeddings().weight
    new_ids = method.family.pipeline.tokenizer.convert_tokens_to_ids([TOKEN, f"{TOKEN}_1"])
    assert torch.equal(vectors, rows[new_ids].detach())
    from safetensors.torch import load_file

    assert torch.equal(load_file(out / "embedding.safetensors")["emb_params"], vectors)

    common = ["generate", "--model", "tiny-sd", "--prompt", PROMPT, "--steps", "4", "--sampler", "ddim",
              "--guidance", "5", "--seed", "3"]
    assert run_cli(*common, "--embedding", out / "embedding.safetensors", "--out", tmp_path / "ti.png") == 0
    assert run_cli(*common, "--out", tmp_path / "base.png") == 0

    from_pt = _diffusers_image(lambda p: p.load_textual_inversion(str(out / "embedding.pt")))  # token from the file
    from_safetensors = _diffusers_image(lambda p: p.load_textual_inversion(str(out / "embedding.safetensors"), token=TOKEN))
    assert np.array_equal(_pixels(tmp_path / "ti.png"), from_pt)
    assert np.array_equal(from_pt, from_safetensors)
    assert np.abs(from_pt - _pixels(tmp_path / "base.png")).max() > 0, "the embedding changed nothing"

    record = read_record(tmp_path / "ti.png")
    assert record["embeddings"] == [[str(out / "embedding.safetensors"), TOKEN]]
    assert f"Embeddings: {TOKEN}" in Image.open(tmp_path / "ti.png").text["parameters"]


def test_trained_text_encoder_and_loaded_embedding_encode_prompts_alike(trained):
    method, out = trained
    pipeline = build_preset("tiny-sd")
    pipeline.load_textual_inversion(str(out / "embedding.pt"))
    prompt = pipeline.maybe_convert_prompt(PROMPT, pipeline.tokenizer)
    assert prompt == f"a photo of {TOKEN} {TOKEN}_1"
    expected = method.family.encode_prompts(method.training_captions([PROMPT]))["encoder_hidden_states"]
    got = StableDiffusionFamily(pipeline).encode_prompts([prompt])["encoder_hidden_states"]
    torch.testing.assert_close(got, expected.detach(), rtol=0, atol=0)


def test_resumed_run_learns_the_same_embedding(tmp_path, subject_images):
    from dataclasses import replace

    base = TrainOptions(model="tiny-sd", images=str(subject_images), out="", steps=5, learning_rate=5e-2,
                        log_with="none", checkpoint_every=1)

    def run(out, **overrides):
        method = TextualInversionMethod(TextualInversionOptions(token=TOKEN, init_word="toy"))
        train(replace(base, out=str(tmp_path / out), **overrides), method, {})
        return method.embedding().vectors["text_encoder"]

    straight = run("straight")
    run("stopped", steps=3)
    assert torch.equal(run("stopped", resume="latest"), straight)  # templates drawn as in the straight run


def _train_cli(tmp_path, subject_images, *args):
    return run_cli("train", "textual_inversion", "--model", "tiny-sd", "--images", subject_images, "--out", tmp_path,
                   "--steps", "1", "--log-with", "none", *args)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--token", "toy", "--init-word", "dog"], "token 'toy' is already in the tokenizer's vocabulary"),
        (["--token", TOKEN, "--init-word", "zebra"], "--init-word 'zebra' is 5 tokens (z e b r a</w>); use a word that is one token"),
        (["--token", "<SKS>", "--init-word", "toy"], "--token must be lower case"),
    ],
)
def test_bad_training_input_is_a_clear_error(tmp_path, subject_images, capsys, args, message):
    assert _train_cli(tmp_path, subject_images, *args) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1


def test_embedding_of_another_width_is_a_clear_error(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"emb_params": torch.randn(1, 768)}, str(tmp_path / "sd15.safetensors"))
    code = run_cli("generate", "--model", "tiny-sd", "--prompt", "a sd15", "--steps", "1",
                   "--embedding", f"{tmp_path / 'sd15.safetensors'}:<sd15>", "--out", tmp_path / "x.png")
    assert code == 2
    assert "sd15.safetensors has embedding width 768, but this model's text_encoder expects 32" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
