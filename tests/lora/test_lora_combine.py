"""`tunelab lora combine`: several weighted LoRAs as one, stacked exactly or re-factorised by SVD."""

from __future__ import annotations

import pytest
import torch

from helpers import run_cli
from lora_tool_helpers import denoiser_output, mixed_keys, random_lora, relative_error
from tunelab.errors import TunelabError
from tunelab.formats.kohya_lora import kohya_metadata
from tunelab.formats.lora_io import read_lora_file, write_lora
from tunelab.lora.combining import WeightedLora, combine_svd, concat
from tunelab.lora.merging import apply_loras
from tunelab.lora.modules import adaptable_modules
from tunelab.models.presets import build_preset

WEIGHTS = (0.7, -0.4)


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory):
    """A kohya LoRA (rank 4, alpha 1) and a PEFT LoRA (rank 3, alpha 6) sharing some modules."""
    folder = tmp_path_factory.mktemp("combine")
    pipeline = build_preset("tiny-sd")
    keys = mixed_keys(pipeline)
    first = random_lora(pipeline, keys[:6], rank=4, alpha=1.0, seed=3)
    second = random_lora(pipeline, keys[3:], rank=3, alpha=6.0, seed=4)
    write_lora(first, folder / "first.safetensors", "kohya", kohya_metadata(first, "sd_v1"))
    write_lora(second, folder / "second.safetensors", "peft", {})
    return folder, first, second


def weighted_sum(first, second) -> dict[str, torch.Tensor]:
    total = {}
    for lora, weight in zip((first, second), WEIGHTS):
        for key, module in lora.items():
            total[key] = total.get(key, 0) + weight * module.delta()
    return total


def test_concat_equals_the_weighted_sum_of_deltas(overlapping, tmp_path):
    folder, first, second = overlapping
    out = tmp_path / "concat.safetensors"
    code = run_cli("lora", "combine", f"{folder / 'first.safetensors'}:{WEIGHTS[0]}", f"{folder / 'second.safetensors'}:{WEIGHTS[1]}",
                   "--mode", "concat", "--out", out)
    assert code == 0

    combined = read_lora_file(out)
    assert combined.format == "kohya"  # the first input's layout
    expected = weighted_sum(first, second)
    assert set(combined.lora) == set(expected)
    for key, delta in expected.items():
        module = combined.lora[key]
        torch.testing.assert_close(module.delta(), delta, atol=1e-6, rtol=1e-5, msg=key)
        assert module.rank == (first[key].rank if key in first else 0) + (second[key].rank if key in second else 0)
        assert module.alpha == 7.0  # one alpha, the largest rank (4 + 3): weights and scales live in `up`

    # diffusers reads the result as the weighted sum too (it misreads per-module kohya alphas).
    loaded, merged = build_preset("tiny-sd"), build_preset("tiny-sd")
    loaded.load_lora_weights(str(out))
    apply_loras(adaptable_modules(merged), [(first, WEIGHTS[0]), (second, WEIGHTS[1])])
    torch.testing.assert_close(denoiser_output(loaded), denoiser_output(merged), atol=1e-5, rtol=1e-4)


def test_svd_keeps_the_best_approximation_of_the_weighted_sum(overlapping):
    _, first, second = overlapping
    parts = [WeightedLora(first, WEIGHTS[0], "first"), WeightedLora(second, WEIGHTS[1], "second")]
    expected = weighted_sum(first, second)

    exact, _ = combine_svd(parts, rank=7)  # 4 + 3: every module's whole sum
    for key, delta in expected.items():
        assert relative_error(exact[key].delta(), delta) < 1e-5, key

    low, report = combine_svd(parts, rank=2)
    for row in report:
        delta = expected[row.key].flatten(1)
        singular_values = torch.linalg.svdvals(delta)
        best_error = singular_values[2:].square().sum().sqrt()  # Eckart-Young: the tail of the spectrum
        error = (low[row.key].delta().flatten(1) - delta).norm()
        torch.testing.assert_close(error, best_error, atol=1e-5, rtol=1e-4)
        assert low[row.key].rank == 2 and low[row.key].alpha == 2.0
        assert row.frobenius_kept == pytest.approx(float(singular_values[:2].norm() / singular_values.norm()), rel=1e-4)


def test_svd_mode_through_the_cli_writes_the_chosen_layout_and_precision(overlapping, tmp_path, capsys):
    folder, first, second = overlapping
    out = tmp_path / "svd.safetensors"
    code = run_cli("lora", "combine", folder / "first.safetensors", folder / "second.safetensors", "--mode", "svd",
                   "--rank", "3", "--format", "peft", "--precision", "bf16", "--out", out)
    assert code == 0
    assert "Frobenius share kept" in capsys.readouterr().out
    combined = read_lora_file(out)
    assert combined.format == "peft"
    assert {module.down.dtype for module in combined.lora.values()} == {torch.bfloat16}
    assert {module.rank for module in combined.lora.values()} == {3}


def test_bad_combinations_are_clear_errors(overlapping, tmp_path, capsys):
    folder, first, _ = overlapping
    assert run_cli("lora", "combine", folder / "first.safetensors", "--mode", "svd", "--out", tmp_path / "x.safetensors") == 2
    assert "--mode svd needs --rank" in capsys.readouterr().err

    key = next(iter(first))
    wrong = {key: random_lora(build_preset("tiny-sd"), [key], rank=2, alpha=2.0)[key]}
    wrong[key].down = torch.zeros(2, 5)  # another in-width: made for another model
    with pytest.raises(TunelabError, match=f"a and b disagree on {key}"):
        concat([WeightedLora(first, 1.0, "a"), WeightedLora(wrong, 1.0, "b")])
