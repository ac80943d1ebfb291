"""A checkpoint step or a reshard killed at any of its writes leaves the previous complete step named by the
manifest and loadable, unchanged; a step is never rewritten in place; and a planted link or a forged step
name cannot lead a step's files out of the run folder. Crashes are simulated by making one write raise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from glann_testing import plant_pickle

from glann_ext.train import checkpoint as ckpt
from glann_ext.train.world import World

TOTAL = 4


def _save(run: Path, k: int) -> None:
    """One checkpoint step of a 1-process run whose GLO codes are all ``k``."""
    state = {"epoch": k, "step_in_epoch": 0, "global_step": k, "codes": _table(k)}
    replicated, rows = ckpt.split_state("glo", state, TOTAL)
    main = {"phase": "glo", "glo": replicated, "imle": None, "config": {}, "image_shape": [1, 2, 2]}
    info = {"phase": "glo", "epoch": k, "global_step": k}
    ckpt.save_step(run, World(), TOTAL, lambda: main, rows, info)


def _table(k: int) -> torch.Tensor:
    """Row i of step k's table: (k, i): every row different, so rows put in the wrong place show."""
    return torch.stack([torch.full((TOTAL,), float(k)), torch.arange(TOTAL, dtype=torch.float32)], 1)


def _codes(run: Path) -> torch.Tensor:
    return ckpt.load_latest(run)["glo"]["codes"]


@pytest.mark.parametrize("dies_at", ["shard", "main.pt", "manifest.json"])
def test_a_checkpoint_step_killed_at_any_write_leaves_the_previous_step_whole(tmp_path, monkeypatch, dies_at):
    run = tmp_path / "run"
    _save(run, 1)
    real = ckpt.atomic_write

    def killed_at(path, write):
        name = Path(path).name
        if name == dies_at or (dies_at == "shard" and name.startswith("shard-")):
            raise KeyboardInterrupt
        return real(path, write)

    monkeypatch.setattr(ckpt, "atomic_write", killed_at)
    with pytest.raises(KeyboardInterrupt):
        _save(run, 2)
    monkeypatch.undo()
    assert ckpt.read_manifest(run)["seq"] == 0
    assert torch.equal(_codes(run), _table(1))  # the step named is whole and unchanged
    _save(run, 2)  # the next save goes on
    assert torch.equal(_codes(run), _table(2))
    steps = sorted(p.name for p in ckpt.checkpoint_dir(run).glob("step-*"))
    assert steps == [ckpt.read_manifest(run)["step_dir"]]


def test_a_reshard_killed_before_its_manifest_leaves_the_old_step_named_and_whole(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _save(run, 1)

    def killed(run, manifest):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.reshard(run, 2, log=lambda s: None)
    monkeypatch.undo()
    assert ckpt.read_manifest(run)["world_size"] == 1
    assert torch.equal(_codes(run), _table(1))
    ckpt.reshard(run, 2, log=lambda s: None)  # and it can be done again
    assert ckpt.read_manifest(run)["world_size"] == 2 and torch.equal(_codes(run), _table(1))  # rows in order
    ckpt.reshard(run, 1, log=lambda s: None)
    assert torch.equal(_codes(run), _table(1))


def test_each_checkpoint_step_is_written_into_a_new_step_folder(tmp_path):
    """A step is never rewritten in place: the folder the manifest names is not touched by the next save."""
    run = tmp_path / "run"
    _save(run, 1)
    first = ckpt.read_manifest(run)["step_dir"]
    _save(run, 2)
    second = ckpt.read_manifest(run)["step_dir"]
    assert first != second and not (ckpt.checkpoint_dir(run) / first).exists()


def test_a_link_planted_as_the_checkpoints_folder_is_replaced_not_followed(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    (run / "checkpoints").symlink_to(outside)
    _save(run, 1)
    assert not list(outside.iterdir())
    assert not (run / "checkpoints").is_symlink() and torch.equal(_codes(run), _table(1))


def test_a_reshard_carries_main_pt_only_after_loading_it_as_a_checkpoint(tmp_path):
    """reshard writes the new step's main.pt from the old one *loaded* (tensors and plain values only): a
    planted pickle in its place is refused and nothing is rewritten (a byte copy carried it into the new step
    and reported success)."""
    run = tmp_path / "run"
    _save(run, 1)
    main_pt = ckpt.checkpoint_dir(run) / ckpt.read_manifest(run)["step_dir"] / ckpt.MAIN_FILE
    plant_pickle(main_pt, tmp_path / "PWNED")
    before = ckpt.read_manifest(run)
    with pytest.raises(ckpt.CheckpointError, match="not loaded"):
        ckpt.reshard(run, 2, log=lambda s: None)
    assert ckpt.read_manifest(run) == before and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "step_dir", ["step-00000000/../../../outside", "step-00000000/..", "step-00000000/x"]
)
def test_a_manifest_step_dir_is_the_exact_name_of_its_seq(tmp_path, step_dir):
    """A step folder name that merely starts like one (``step-00000000/../..``) leads out of checkpoints/:
    refused as an impossible step."""
    run = tmp_path / "run"
    _save(run, 1)
    manifest = ckpt.read_manifest(run)
    ckpt.write_manifest(run, {**manifest, "step_dir": step_dir})
    with pytest.raises(ckpt.CheckpointError, match="impossible step"):
        ckpt.read_manifest(run)
