"""An output folder belongs to one run (issue 16, "Work lost"): each test reproduces a reported way to lose
work and checks that it is refused with one line (exit 2) or cleaned up; and a batch the data cannot fill."""

from __future__ import annotations

import fcntl
import shutil

import pytest
import torch

from helpers import one_line_error, refuse_model_loading, run_cli
from tunelab.training import checkpoints
from tunelab.training.checkpoints import complete_checkpoints, save_checkpoint
from tunelab.training.output_folder import LOCK_FILE

TRAIN = ["train", "lora", "--model", "tiny-sd", "--prompt", "a photo of sks toy", "--log-with", "none", "--rank", "2"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, subject_images):
    """A finished 2-step run with a checkpoint at each step; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run_cli(*TRAIN, "--images", subject_images, "--out", out, "--steps", "2", "--checkpoint-every", "1") == 0
    return out


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def no_model(monkeypatch):
    refuse_model_loading(monkeypatch)


def test_a_folder_of_someone_elses_files_is_refused_unless_overwrite(tmp_path, subject_images, capsys, no_model):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes\n")
    (mine / "lora.safetensors").write_text("my own LoRA")
    err = one_line_error(capsys, run_cli(*TRAIN, "--images", subject_images, "--out", mine, "--steps", "1"))
    assert "holds files tunelab did not write (config.yaml, lora.safetensors)" in err and "--overwrite" in err
    assert (mine / "config.yaml").read_text() == "my own notes\n" and (mine / "lora.safetensors").read_text() == "my own LoRA"


def test_a_finished_run_is_not_replaced_by_a_shorter_one(finished_run, tmp_path, subject_images, capsys, no_model):
    out = copy_of(finished_run, tmp_path)
    before = (out / "lora.safetensors").read_bytes()
    err = one_line_error(capsys, run_cli(*TRAIN, "--images", subject_images, "--out", out, "--steps", "1",
                                         "--checkpoint-every", "1"))
    assert "holds a finished run of 2 steps; --steps 1 would replace it with a shorter one" in err
    assert (out / "lora.safetensors").read_bytes() == before


def test_a_second_run_on_a_folder_in_use_is_refused_at_once_naming_the_holder(finished_run, tmp_path, subject_images,
                                                                              capsys, no_model):
    out = copy_of(finished_run, tmp_path)
    with open(out / LOCK_FILE, "w") as holder:  # what a live run holds: an flock, and who it is
        holder.write("pid 4242 on trainer-7, since 2026-12-01 01:00:00\n")
        holder.flush()
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        err = one_line_error(capsys, run_cli(*TRAIN, "--images", subject_images, "--out", out, "--steps", "3",
                                             "--checkpoint-every", "1", "--resume", "latest"))
    assert "is in use by another tunelab run (pid 4242 on trainer-7" in err


def test_a_stale_lock_and_leftovers_of_a_killed_run_are_cleaned_on_the_next_start(finished_run, tmp_path, subject_images):
    out = copy_of(finished_run, tmp_path)
    (out / LOCK_FILE).write_text("pid 99999999 on gone-host, since 2026-01-01 00:00:00\n")  # nobody holds its flock
    half_deleted = out / "checkpoints" / "step-0000001"
    (half_deleted / "step.json").unlink()  # a prune killed half-way (an older tunelab deleted in place)
    (out / "checkpoints" / ".step-0000003.tmp").mkdir()  # a save killed half-way
    (out / "checkpoints" / ".step-0000000.deleting").mkdir()  # a prune killed half-way
    (out / ".lora.safetensors.tmp-12345").write_bytes(b"half a file")  # an atomic write killed half-way
    code = run_cli(*TRAIN, "--images", subject_images, "--out", out, "--steps", "3", "--checkpoint-every", "1",
                   "--resume", "latest")
    assert code == 0
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]
    assert not (out / ".lora.safetensors.tmp-12345").exists()
    assert f"pid {__import__('os').getpid()}" in (out / LOCK_FILE).read_text()


def test_a_prune_killed_half_way_never_leaves_half_a_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def contents(folder):
        (folder / "params.safetensors").write_text("weights")

    save_checkpoint(out, 1, 0, contents)
    original = shutil.rmtree

    def killed_during_delete(path, *args, **kwargs):
        (next(iter(path.iterdir()))).unlink()  # deletes some files, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.shutil, "rmtree", killed_during_delete)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(out, 2, 1, contents)
    monkeypatch.setattr(checkpoints.shutil, "rmtree", original)
    # The pruned checkpoint went out of sight before its files went: only complete ones are listed.
    assert [path.name for path in complete_checkpoints(out)] == ["step-0000002"]
    assert [path.name for path in (out / "checkpoints").iterdir() if path.name.startswith("step-")] == ["step-0000002"]


def test_a_resume_with_other_settings_is_refused_and_does_not_claim_the_folder(finished_run, tmp_path, subject_images,
                                                                              capsys):
    checkpoint = finished_run / "checkpoints" / "step-0000002"
    out = tmp_path / "new"
    # The case: the checkpoint's learning rate won silently while config.yaml recorded the new one.
    err = one_line_error(capsys, run_cli(*TRAIN, "--images", subject_images, "--out", out, "--steps", "3",
                                         "--resume", checkpoint, "--learning-rate", "0.5"))
    assert "that run had other settings (learning_rate 0.0001 -> 0.5)" in err
    err = one_line_error(capsys, run_cli(*TRAIN[:-1], "3", "--images", subject_images, "--out", out, "--steps", "3",
                                         "--resume", checkpoint))
    assert "rank 2 -> 3" in err and not out.exists()
    # The corrected command runs (the refused ones claimed nothing), and may change how long it runs.
    assert run_cli(*TRAIN, "--images", subject_images, "--out", out, "--steps", "3", "--resume", checkpoint) == 0


def test_a_run_that_fails_before_any_result_leaves_the_folder_as_it_was(finished_run, tmp_path, subject_images, capsys):
    out = copy_of(finished_run, tmp_path)
    record = (out / "run.yaml").read_bytes()
    damaged = out / "checkpoints" / "step-0000002" / "state.pt"
    damaged.write_bytes(b"")  # an empty state.pt: issue 16's "internal error"
    err = one_line_error(capsys, run_cli(*TRAIN, "--images", subject_images, "--out", out, "--steps", "4",
                                         "--checkpoint-every", "1", "--resume", "latest"))
    assert "cannot read state.pt: damaged or not a PyTorch checkpoint" in err
    assert (out / "run.yaml").read_bytes() == record


def test_pickled_training_state_is_refused_without_torchs_advice(finished_run, tmp_path, subject_images, capsys):
    out = copy_of(finished_run, tmp_path)
    torch.save({"optimizer": out}, out / "checkpoints" / "step-0000002" / "state.pt")  # a pathlib object: a pickle global
    err = one_line_error(capsys, run_cli(*TRAIN, "--images", subject_images, "--out", out, "--steps", "4",
                                         "--checkpoint-every", "1", "--resume", "latest"))
    assert "refusing to load state.pt: it contains Python objects other than tensors" in err
    assert "weights_only" not in err


@pytest.mark.parametrize("where", ["file", "under a file", "root"])
def test_an_out_that_cannot_be_a_folder_is_one_line(where, tmp_path, subject_images, capsys, no_model):
    (tmp_path / "afile").write_text("x")
    out = {"file": tmp_path / "afile", "under a file": tmp_path / "afile" / "run", "root": "/"}[where]
    err = one_line_error(capsys, run_cli(*TRAIN, "--images", subject_images, "--out", out, "--steps", "1"))
    assert {"file": "is a file; give a folder", "under a file": "afile is a file, not a folder",
            "root": "is the file-system root"}[where] in err


def test_a_batch_larger_than_the_dataset_is_refused(tmp_path, subject_images, capsys):
    err = one_line_error(capsys, run_cli(*TRAIN, "--images", subject_images, "--out", tmp_path / "o", "--steps", "1",
                                         "--batch-size", "9"))
    assert "--batch-size 9 is larger than the 4 training images (repeats included); use --batch-size 4 or less" in err
    assert not (tmp_path / "o").exists()  # a run that failed before any result leaves no folder it made
