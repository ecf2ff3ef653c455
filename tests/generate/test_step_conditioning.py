"""Prompt editing, alternation and AND during sampling, checked on the denoiser's own inputs and outputs.

Each test records every call of the denoiser's forward (what the model really sees: the conditioning rows)
and what the pipeline got back, then compares them with the encodings of the texts A1111's rules choose
for each step.
"""

from __future__ import annotations

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.generation.prompt_encoding import encode_texts
from tunelab.generation.session import GenerateOptions, apply_image_options, prepare, render, text_inputs


def options(**overrides):
    values = dict(model="tiny-sd", prompt="a photo", out="unused.png", steps=6, sampler="euler", guidance=5.0, seed=1)
    return GenerateOptions(**(values | overrides))


@pytest.fixture(scope="module")
def sd_session():
    return prepare(options())


class Recorder:
    """Wraps a denoiser's forward (as an instance attribute, the way the wrapper under test finds it) and
    hooks its module call: inner calls = what the model computed, outer = what the pipeline received."""

    def __init__(self, denoiser):
        self.denoiser, self.inner, self.outer = denoiser, [], []
        original = denoiser.forward

        def recording_forward(*args, **kwargs):
            output = original(*args, **kwargs)
            self.inner.append((kwargs["encoder_hidden_states"].clone(), kwargs.get("pooled_projections"), output[0].clone()))
            return output

        denoiser.forward = recording_forward
        self.hook = denoiser.register_forward_hook(lambda module, args, output: self.outer.append(output[0].clone()))

    def close(self):
        self.hook.remove()
        del self.denoiser.forward


def run(session, **overrides):
    opts = options(**overrides)
    session.prompt_text = opts.prompt  # what prepare() keeps of the prompt (it has no tags here): one model load per module
    apply_image_options(session, opts)  # the sampler
    inputs = text_inputs(session, opts)
    recorder = Recorder(session.family.module(session.family.denoiser_name))
    try:
        render(session, opts, opts.seed, inputs)
    finally:
        recorder.close()
    return recorder, inputs


def encodings(session, texts):
    return {text: embeds for text, (embeds, _) in encode_texts(session.pipeline, texts).items()}


def rows_are(embeds, expected):
    return embeds.shape[0] == len(expected) and all(torch.equal(embeds[i:i + 1], e) for i, e in enumerate(expected))


@pytest.mark.parametrize("when, steps, switch_after", [("3", 6, 3), ("0.5", 6, 3), ("0.5", 5, 2), ("0.25", 8, 2), ("1", 4, 1)])
def test_prompt_editing_switches_at_the_asked_step(sd_session, when, steps, switch_after):
    recorder, inputs = run(sd_session, prompt=f"a photo of [cat:dog:{when}]", negative_prompt="[blurry::2]", steps=steps)
    assert inputs.per_step is not None
    texts = ["a photo of cat", "a photo of dog", "blurry", ""]
    encoded = encodings(sd_session, texts)  # padded alike: these are the tensors the plan encodes
    assert len(recorder.inner) == steps  # euler: one call per step
    for index, (embeds, _, _) in enumerate(recorder.inner):
        step = index + 1
        positive = encoded["a photo of cat"] if step <= switch_after else encoded["a photo of dog"]
        negative = encoded["blurry"] if step <= 2 else encoded[""]
        assert rows_are(embeds, [negative, positive]), f"step {step}"
    for (_, _, inner), outer in zip(recorder.inner, recorder.outer):
        assert torch.equal(inner, outer)  # one plain sub-prompt: the model's prediction passes unchanged


def test_alternation_alternates_every_step(sd_session):
    recorder, _ = run(sd_session, prompt="a [cat|dog|bird]", negative_prompt="[ugly|]", steps=5)
    encoded = encodings(sd_session, ["a cat", "a dog", "a bird", "ugly", ""])
    expected = ["a cat", "a dog", "a bird", "a cat", "a dog"]
    for step, ((embeds, _, _), text) in enumerate(zip(recorder.inner, expected), start=1):
        negative = encoded["ugly"] if step % 2 else encoded[""]
        assert rows_are(embeds, [negative, encoded[text]]), f"step {step}"


def test_second_order_samplers_keep_one_text_per_step(sd_session):
    recorder, _ = run(sd_session, prompt="[cat:dog:1]", sampler="heun", steps=3)
    encoded = encodings(sd_session, ["cat", "dog", ""])
    assert len(recorder.inner) == 5  # Heun: two calls per step, one for the last
    texts = ["cat", "cat", "dog", "dog", "dog"]  # step 1's two calls see step 1's text
    assert all(rows_are(embeds, [encoded[""], encoded[text]]) for (embeds, _, _), text in zip(recorder.inner, texts))


@pytest.mark.parametrize("sampler", ["euler", "dpm++_2m_karras", "ddim"])
def test_and_is_the_weighted_sum_of_noise_predictions(sd_session, sampler):
    recorder, _ = run(sd_session, prompt="a cat AND a [dog:house:2] :0.5 AND a tree:-0.25", negative_prompt="blurry",
                      steps=3, sampler=sampler)
    encoded = encodings(sd_session, ["a cat", " a dog", " a house", " a tree", "blurry"])
    for step, ((embeds, _, prediction), outer) in enumerate(zip(recorder.inner, recorder.outer), start=1):
        second = encoded[" a dog"] if step <= 2 else encoded[" a house"]
        assert rows_are(embeds, [encoded["blurry"], encoded["a cat"], second, encoded[" a tree"]])
        uncond, cat, dog, tree = prediction.chunk(4)
        assert torch.equal(outer[:1], uncond)
        expected = uncond + 1.0 * (cat - uncond) + 0.5 * (dog - uncond) - 0.25 * (tree - uncond)
        torch.testing.assert_close(outer[1:], expected, rtol=0, atol=1e-6)
        assert not torch.allclose(outer[1:], cat)


def test_sdxl_and_carries_each_pooled_vector_and_size_ids():
    session = prepare(options(model="tiny-sdxl"))
    unet = session.pipeline.unet
    seen = []
    original = unet.forward

    def recording_forward(*args, **kwargs):
        seen.append({key: value.clone() for key, value in kwargs["added_cond_kwargs"].items()})
        return original(*args, **kwargs)

    unet.forward = recording_forward
    try:
        opts = options(model="tiny-sdxl", prompt="a cat AND a dog", steps=2)
        session.prompt_text = opts.prompt
        render(session, opts, 1, text_inputs(session, opts))
    finally:
        del unet.forward
    encoded = encode_texts(session.pipeline, ["a cat", " a dog", ""])
    pooled = seen[0]["text_embeds"]  # (3, P): negative (zeros: no negative prompt, force_zeros_for_empty_prompt), cat, dog
    assert torch.equal(pooled, torch.cat([torch.zeros_like(encoded[""][1]), encoded["a cat"][1], encoded[" a dog"][1]]))
    assert torch.equal(seen[0]["time_ids"][1], seen[0]["time_ids"][2])


def test_plain_prompts_take_the_pipelines_own_path(sd_session):
    recorder, inputs = run(sd_session, prompt="a (red:1.2) car", steps=2)
    assert inputs.per_step is None
    assert all(embeds.shape[0] == 2 for embeds, _, _ in recorder.inner)


def test_flux_alternates_and_refuses_and():
    session = prepare(options(model="tiny-flux", guidance=3.5))
    recorder, _ = run(session, model="tiny-flux", guidance=3.5, prompt="a [cat|dog] photo", steps=3)
    pipeline = session.pipeline
    for (embeds, pooled, _), text in zip(recorder.inner, ["a cat photo", "a dog photo", "a cat photo"]):
        with torch.no_grad():
            expected_embeds, expected_pooled, _ = pipeline.encode_prompt(prompt=text, prompt_2=None,
                                                                         max_sequence_length=session.family.max_sequence_length)
        assert torch.equal(embeds, expected_embeds) and torch.equal(pooled, expected_pooled)
    session.prompt_text = "a cat AND a dog"
    with pytest.raises(TunelabError, match="AND and prompt weights .* not supported on Flux.1"):
        text_inputs(session, options(model="tiny-flux", prompt="a cat AND a dog"))


def test_and_without_guidance_is_refused(sd_session):
    opts = options(prompt="a cat AND a dog", guidance=1.0, steps=2)
    sd_session.prompt_text = opts.prompt
    with pytest.raises(TunelabError, match="need classifier-free guidance"):
        render(sd_session, opts, 1, text_inputs(sd_session, opts))
    assert "forward" not in vars(sd_session.pipeline.unet)  # the wrapper is gone after a failure too


def test_inputs_made_for_other_steps_are_refused(sd_session):
    sd_session.prompt_text = "[a:b:2]"
    inputs = text_inputs(sd_session, options(prompt="[a:b:2]", steps=4))
    with pytest.raises(TunelabError, match="made for 4 steps"):
        render(sd_session, options(prompt="[a:b:2]", steps=5), 1, inputs)
