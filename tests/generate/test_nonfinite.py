"""A rendered image with NaN/inf pixels is one clear error, never a black PNG written with exit 0."""

from __future__ import annotations

from helpers import run_cli


def test_a_nan_image_is_an_error_and_no_file_is_written(tmp_path, capsys):
    # On tiny-sd, A1111's mean restoration of "[blurry]" divides by an embedding mean near zero: the
    # negative conditioning overflows and the image comes out NaN (what A1111 would show as black).
    assert run_cli("generate", "--model", "tiny-sd", "--prompt", "a photo of sks toy", "--negative-prompt", "[blurry]",
                   "--steps", "2", "--out", tmp_path / "x.png") == 2
    err = capsys.readouterr().err
    assert "the model produced NaN/inf pixels for seed 0: no image written" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()
