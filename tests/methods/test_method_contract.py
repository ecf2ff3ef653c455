"""Every registered technique keeps the same contract on every tiny family it supports.

The matrix is the registry x the tiny presets: a new technique joins it by registering (and
declaring `example_options` if it has required options), with no edit here. Where its example names a file
made for another model (a weight predictor), tests/conftest.py gives the tiny models' as a fixture
`<technique>_tiny_options`, which replaces the example's values.
Cases: one step trains and saves an artifact that reads back into generation; attaching it changes
the model and detaching restores the base exactly; resuming from a checkpoint is bit-identical;
a family the technique does not support is refused before any model loads.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from a1111_safe_load_rules import a1111_refusals
from safetensors.torch import load_file

import tunelab.models.loading
from tunelab.errors import TunelabError
from tunelab.generation.session import GenerateOptions, prepare
from tunelab.methods import METHODS, method_class
from tunelab.models.family import family_class
from tunelab.models.loading import load_pipeline
from tunelab.models.presets import PRESET_PIPELINES
from tunelab.training.loop import train
from tunelab.training.prepare import prepare_run

TINY_PRESETS = ("tiny-sd", "tiny-sdxl", "tiny-flux", "tiny-sd3")
PROMPT = "a photo of a red toy"


def family_name(preset: str) -> str:
    return family_class(PRESET_PIPELINES[preset]).name


SUPPORTED = [(name, preset) for name in METHODS for preset in TINY_PRESETS if family_name(preset) in method_class(name).families]
UNSUPPORTED = [(name, preset) for name in METHODS for preset in TINY_PRESETS
               if family_name(preset) not in method_class(name).families]


@pytest.fixture(scope="module")
def examples(request):
    """technique -> its example options on the tiny presets: `example_options`, with `<technique>_tiny_options`'s
    values where tests/conftest.py has that fixture."""
    def of(name: str) -> dict:
        try:
            tiny = request.getfixturevalue(f"{name}_tiny_options")
        except pytest.FixtureLookupError:
            tiny = {}
        return {**method_class(name).example_options, **tiny}

    return of


def run_values(name: str, preset: str, images: Path, out: Path, examples, **extra) -> dict:
    return {"model": preset, "images": str(images), "out": str(out), "prompt": PROMPT, "steps": 2,
            "learning_rate": 1e-2, "log_with": "none", "checkpoint_every": 1, **examples(name), **extra}


def train_run(name: str, values: dict) -> Path:
    run = prepare_run(name, values)
    return Path(train(run.options, run.method, run.resolved, run.family_options))


def tensors(artifact: Path) -> dict[str, torch.Tensor]:
    """Every tensor an artifact holds (a file, or every safetensors file of a folder), by name."""
    files = sorted(artifact.rglob("*.safetensors")) if artifact.is_dir() else [artifact]
    return {f"{path.relative_to(artifact) if artifact.is_dir() else ''}:{key}": value
            for path in files for key, value in load_file(path).items()}


def identifier(method) -> str | None:
    """What names the subject in prompts: the technique's token where it learns one."""
    return method.example_options.get("token")


def subject_prompt(method) -> str:
    return f"a photo of {identifier(method) or 'sks'} toy"


def denoised_latents(pipeline, family, prompt: str) -> torch.Tensor:
    """Two sampling steps to latents: a float fingerprint of what the whole model computes for the prompt."""
    extra = {"max_sequence_length": family.max_sequence_length} if not family.prompt_weighting else {}
    return pipeline(prompt, num_inference_steps=2, guidance_scale=2.0, output_type="latent",
                    generator=torch.Generator().manual_seed(0), **extra).images


@pytest.fixture(scope="module")
def trained(tmp_path_factory, subject_images, examples):
    """(technique, preset) -> the artifact of a 2-step run with a checkpoint at every step, trained once."""
    runs = {}

    def artifact(name: str, preset: str) -> Path:
        if (name, preset) not in runs:
            out = tmp_path_factory.mktemp(f"{name}-{preset}")
            runs[name, preset] = (train_run(name, run_values(name, preset, subject_images, out, examples)), out)
        return runs[name, preset]

    return artifact


@pytest.mark.parametrize("name,preset", SUPPORTED)
def test_one_run_saves_an_artifact_that_reads_back_into_generation(name, preset, trained, tmp_path):
    method = method_class(name)
    artifact, _ = trained(name, preset)
    assert artifact.exists() and artifact.name == method.artifact_name
    prompt = subject_prompt(method)
    plain = {"model": preset, "prompt": prompt, "out": str(tmp_path / "x.png")}
    tuned = prepare(GenerateOptions(**{**plain, **method.generate_options(artifact, identifier(method))}))
    base = prepare(GenerateOptions(**plain))
    with torch.no_grad():
        assert not torch.equal(denoised_latents(tuned.pipeline, tuned.family, prompt),
                               denoised_latents(base.pipeline, base.family, prompt))


@pytest.mark.parametrize("name,preset", [case for case in SUPPORTED if method_class(case[0]).generate_flag is not None])
def test_attach_changes_the_model_and_detach_restores_the_base_exactly(name, preset, trained):
    method = method_class(name)
    artifact, _ = trained(name, preset)
    pipeline = load_pipeline(preset)
    family = family_class(type(pipeline).__name__)(pipeline)
    pipeline.set_progress_bar_config(disable=True)
    prompt = subject_prompt(method)
    with torch.no_grad():
        before = denoised_latents(pipeline, family, prompt)
        weights = {name: {k: v.clone() for k, v in family.module(name).state_dict().items()} for name in family.frozen_modules()}
        spec = method.parse_spec(method.generate_options(artifact, identifier(method))[method.generate_flag.field][0])
        _, handle = method.attach(pipeline, [spec])
        attached = denoised_latents(pipeline, family, prompt)
        method.detach(pipeline, handle)
        after = denoised_latents(pipeline, family, prompt)
    assert not torch.equal(attached, before)
    assert torch.equal(after, before)
    for component, state in weights.items():
        now = family.module(component).state_dict()
        assert set(now) == set(state), f"{component} keeps keys of the detached {name}"
        assert all(torch.equal(now[key], value) for key, value in state.items())


@pytest.mark.parametrize("name,preset", [case for case in SUPPORTED if getattr(method_class(case[0]), "pt_artifact_name", None)])
def test_every_pt_file_passes_a1111s_safe_loader_and_holds_the_safetensors_tensors(name, preset, trained):
    artifact, _ = trained(name, preset)
    pt_file = artifact.with_name(method_class(name).pt_artifact_name)
    assert a1111_refusals(pt_file) == []
    pickled = sorted(_tensor_leaves(torch.load(pt_file, weights_only=True)), key=_tensor_order)
    stored = sorted(load_file(artifact).values(), key=_tensor_order)
    assert len(pickled) == len(stored) and all(torch.equal(a, b) for a, b in zip(pickled, stored))


def _tensor_leaves(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    values = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (list, tuple)) else ()
    return [leaf for value in values for leaf in _tensor_leaves(value)]


def _tensor_order(tensor: torch.Tensor) -> tuple:
    return tuple(tensor.shape), tensor.flatten().tolist()


@pytest.mark.parametrize("name,preset", SUPPORTED)
def test_resuming_from_a_checkpoint_is_bit_identical(name, preset, trained, subject_images, examples, tmp_path):
    artifact, out = trained(name, preset)
    checkpoint = next(out.rglob("step-0000001"))
    resumed = train_run(name, run_values(name, preset, subject_images, tmp_path / "resumed", examples, resume=str(checkpoint)))
    straight, again = tensors(artifact), tensors(resumed)
    assert straight and set(straight) == set(again)
    assert all(torch.equal(straight[key], again[key]) for key in straight)


@pytest.mark.parametrize("name,preset", UNSUPPORTED)
def test_an_unsupported_family_is_refused_before_loading(name, preset, subject_images, examples, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the technique was refused")

    monkeypatch.setattr(tunelab.models.loading, "load_pipeline", no_loading)
    with pytest.raises(TunelabError, match=re.escape(f"{method_class(name).title} is not supported on")):
        prepare_run(name, run_values(name, preset, subject_images, tmp_path / "out", examples))
