"""Checks a 2-process run makes before it trains: the ranks agree on the config, the stage and the dataset
(size and fingerprint), share the run folder, and ask for no single-process-only IMLE option; a mid-epoch
resume of a resharded run reports the epoch's loss once. Each rank has a "node" folder of its own (its
working directory), so a relative --dataset names node-local files, as on nodes without a shared file
system."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from glann_testing import Interrupt, blob_images, free_port, interrupt_at, tiny_config, vgg_state
from torch import nn

from glann_ext.cli import main
from glann_ext.train import checkpoint as ckpt
from glann_ext.train import train
from glann_ext.train.world import GlobalBatchNorm, World, disagreement, global_batchnorm, init_world

WORLD = 2
PG_TIMEOUT_S = 60  # a collective that never matches fails here instead of after the default 30 minutes
SPAWN_TIMEOUT_S = 240  # the whole group (spawning included), however it fails


def spawn_bounded(fn, args: tuple, nprocs: int, timeout_s: float = SPAWN_TIMEOUT_S) -> None:
    """``mp.spawn(fn, args, nprocs)``, but a group still running after ``timeout_s`` is killed and the test
    fails (a regression that hangs the ranks must not hang CI)."""
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"the {nprocs}-process group still ran after {timeout_s} s (killed)")


def _quiet(msg: str) -> None:
    pass


def _cfg(dataset: str, **kw):
    return tiny_config(dataset=dataset, glo_epochs=1, imle_epochs=1, batch_size=16, **kw)


def _cases(rank: int, root: Path) -> dict[str, tuple]:
    """name -> (config, run folder, stage) for this rank; every one must be refused before a step trains."""
    run = root / "runs"
    return {
        "size": (_cfg("size/blobs.npy"), run / "size", "all"),  # 64 images on rank 0, 48 on rank 1
        "content": (_cfg("content/blobs.npy"), run / "content", "all"),  # 64 other images on rank 1
        "missing": (_cfg("only0/blobs.npy"), run / "missing", "all"),  # rank 1 has no such file
        "stage": (_cfg("same/blobs.npy"), run / "stage", "glo" if rank else "all"),
        "seed": (_cfg("same/blobs.npy", seed=5 * rank), run / "seed", "all"),
        "folder": (_cfg("same/blobs.npy"), run / f"own-{rank}", "all"),  # each rank its own --out
        "unique": (_cfg("same/blobs.npy", imle_match="unique"), run / "unique", "all"),
        "precision": (_cfg("same/blobs.npy", imle_precision_weight=0.5), run / "precision", "all"),
        "pixel-unique": (_cfg("same/blobs.npy", imle_space="pixel", imle_match="unique"), run / "pu", "all"),
        # GLO alone needs no IMLE option: it trains (until the hook stops it at its first step)
        "unique-glo": (_cfg("same/blobs.npy", imle_match="unique"), run / "unique-glo", "glo"),
    }


def _worker(rank: int, port: int, root: str, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=PG_TIMEOUT_S))
    torch.set_num_threads(1)
    root = Path(root)
    os.chdir(root / f"node{rank}")
    try:
        for name, (cfg, folder, stage) in _cases(rank, root).items():
            try:
                train(cfg, folder, stage, progress=False, log=_quiet, on_step=interrupt_at("glo", 1))
                out[(name, rank)] = "trained to the end"
            except Interrupt:
                out[(name, rank)] = "trained a step"
            except (ValueError, RuntimeError, OSError) as exc:
                out[(name, rank)] = f"{type(exc).__name__}: {exc}"
        train(None, root / "resharded", progress=False, log=_quiet)  # a 1-process checkpoint, resharded to 2
        # a relative VGG file names each node's own copy: a resume goes on on every rank (a Python caller's
        # path made absolute in each rank's own folder was refused on every rank but 0: a review)
        vgg = _cfg("same/blobs.npy", vgg_weights="vgg.pt", vgg_weight=0.1)
        try:
            train(vgg, root / "runs" / "vgg", progress=False, log=_quiet)
            train(dataclasses.replace(vgg, imle_epochs=2), root / "runs" / "vgg", progress=False, log=_quiet)
            out[("vgg", rank)] = "resumed"
        except Exception as exc:  # noqa: BLE001 (the test reads it)
            out[("vgg", rank)] = f"{type(exc).__name__}: {exc}"
        # the command line's relative --dataset too: made absolute in each node's own folder, the ranks
        # disagreed on it and the job stopped on every rank (a review)
        argv = ["train", "--dataset", "same/blobs.npy", "--out", str(root / "runs" / "cli"), "--preset", "tiny",
                "--glo-epochs", "1", "--imle-epochs", "1", "--batch-size", "16", "--threads", "1",
                "--no-progress", "--sample-every", "0"]  # fmt: skip
        out[("cli", rank)] = main(argv)
    finally:
        dist.destroy_process_group()


def _save(path: Path, images: np.ndarray) -> None:
    path.parent.mkdir(parents=True)
    np.save(path, images)


def _resume_cfg(dataset: str):
    return tiny_config(dataset=dataset, limit=90, glo_epochs=3, imle_epochs=2, batch_size=16, ckpt_every=2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, blob_file) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("checks")
    same, other = blob_images(64, 28), blob_images(64, 28, seed=1)
    for rank in range(WORLD):
        node = root / f"node{rank}"
        _save(node / "same" / "blobs.npy", same)
        _save(node / "size" / "blobs.npy", same[: 64 - 16 * rank])
        _save(node / "content" / "blobs.npy", other if rank else same)
        torch.save(vgg_state(0), node / "vgg.pt")
    _save(root / "node0" / "only0" / "blobs.npy", same)
    # a 1-process run interrupted mid-epoch (GLO step 9, after step 8's checkpoint: epoch 2 has 6 steps),
    # resharded to 2 processes, which finish it in the group; and the same run uninterrupted
    cfg = _resume_cfg(blob_file)
    train(cfg, root / "uninterrupted", progress=False, log=_quiet)
    with pytest.raises(Interrupt):
        train(cfg, root / "resharded", progress=False, log=_quiet, on_step=interrupt_at("glo", 9))
    ckpt.reshard(root / "resharded", WORLD, log=_quiet)
    out = mp.Manager().dict()
    spawn_bounded(_worker, (free_port(), str(root), out), WORLD)
    return root, dict(out)


def test_a_relative_path_names_each_nodes_own_file_on_a_resume(runs):
    root, out = runs
    assert _errors(out, "vgg") == ["resumed", "resumed"]
    saved = json.loads((root / "runs" / "vgg" / "config.json").read_text())
    assert saved["vgg_weights"] == "vgg.pt" and saved["imle_epochs"] == 2  # as spelled: node-local


def test_the_command_lines_relative_dataset_names_each_nodes_own_file(runs):
    root, out = runs
    assert _errors(out, "cli") == [0, 0]
    assert json.loads((root / "runs" / "cli" / "config.json").read_text())["dataset"] == "same/blobs.npy"


def _errors(out: dict, name: str) -> list[str]:
    return [out[(name, r)] for r in range(WORLD)]


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("size", "ConfigError: ranks disagree on the dataset size: rank 0 has 64, rank 1 has 48"),
        ("stage", "ConfigError: ranks disagree on stage: rank 0 has 'all', rank 1 has 'glo'"),
        ("seed", "ConfigError: ranks disagree on seed: rank 0 has 0, rank 1 has 5"),
    ],
)
def test_ranks_that_disagree_stop_at_start_naming_what_differs(runs, name, want):
    """One short line on every rank, naming the field and each rank's value (not a dump of the configs,
    not a hang in mismatched collectives, not training on other data), before the folder is written."""
    root, out = runs
    for msg in _errors(out, name):
        assert msg.startswith(want), msg
        assert "\n" not in msg and len(msg) < 200, msg
    assert not (root / "runs" / name / "checkpoints").exists()


def test_ranks_with_other_images_of_the_same_count_stop_at_start(runs):
    root, out = runs
    for msg in _errors(out, "content"):
        assert msg.startswith(
            "ConfigError: ranks disagree on the dataset's images: rank 1's differ from rank 0's"
        )
        assert "\n" not in msg and len(msg) < 300, msg
    assert not (root / "runs" / "content" / "checkpoints").exists()


def test_a_rank_that_cannot_load_the_data_stops_every_rank(runs):
    _, out = runs
    mine, theirs = out[("missing", 1)], out[("missing", 0)]
    assert "only0/blobs.npy" in mine and "trained" not in mine
    assert (
        theirs.startswith("ConfigError: rank 1 could not load the dataset (") and "only0/blobs.npy" in theirs
    )


def test_a_run_folder_not_shared_by_the_ranks_is_refused_at_start(runs):
    root, out = runs
    for msg in _errors(out, "folder"):
        assert msg.startswith("RunFolderError: ") and "\n" not in msg, msg
        assert "rank 1 does not see the files rank 0 writes" in msg
        assert msg.endswith("must be one folder, named to every rank, on a file system all ranks share")
    for rank in range(WORLD):  # no checkpoint (naming shards nobody can read), and the token is gone
        folder = root / "runs" / f"own-{rank}"
        assert not (folder / "checkpoints").exists()
        assert (
            not any(p.name.startswith(".shared-check") for p in folder.iterdir()) if folder.exists() else True
        )


@pytest.mark.parametrize("name", ["unique", "precision", "pixel-unique"])
def test_single_process_imle_options_are_refused_before_the_glo_stage_trains(runs, name):
    root, out = runs
    for msg in _errors(out, name):
        assert msg.startswith("ConfigError: imle_match='unique' and imle_precision_weight > 0 need every"), (
            msg
        )
        assert "with 2 processes" in msg
    assert not (root / "runs" / name / "checkpoints").exists()
    assert _errors(out, "unique-glo") == ["trained a step"] * WORLD  # --stage glo trains no IMLE


def test_resharded_run_resumed_mid_epoch_reports_each_loss_once(runs):
    """The epoch the 2-process run resumed in (from a 1-process checkpoint) has the loss of the
    uninterrupted 1-process run: the saved loss sum is counted by rank 0 only (it was counted by every
    rank: 2x). Equal up to float rounding, since the 2 processes sum their steps' losses in another order
    (and train with BatchNorm statistics and gradients summed over ranks)."""
    root, _ = runs
    want, got = (_metrics(root / run) for run in ("uninterrupted", "resharded"))
    assert [(r["stage"], r["epoch"], r["steps"]) for r in got] == [
        (r["stage"], r["epoch"], r["steps"]) for r in want
    ]
    for a, b in zip(want, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-3), (a, b)


def _metrics(run: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _grid_worker(rank: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=PG_TIMEOUT_S))
    torch.set_num_threads(1)
    try:  # grids every epoch: each rank joins the reconstruction grid's collective at each of them
        cfg = tiny_config(
            dataset=str(Path(root) / "blobs.npy"), sample_every=1, glo_epochs=2, imle_epochs=1, batch_size=16
        )
        train(cfg, Path(root) / "run", progress=False, log=_quiet)
    finally:
        dist.destroy_process_group()


def test_two_ranks_draw_reconstruction_grids_over_the_whole_dataset(tmp_path):
    """The grids are a collective of every rank (each gives the shown rows it holds; rank 0's shard alone
    was shown before): a run with grids every epoch finishes, and the grids' originals are rows spread
    over both shards (a rank-0-only call would hang, killed by the bound)."""
    from PIL import Image

    from glann_ext.images import PAIR_COLUMNS, make_grid, paired_rows
    from glann_ext.train.run import shown_rows

    images = torch.as_tensor(blob_images(64, 28, seed=4))[:, None] / 255.0
    np.save(tmp_path / "blobs.npy", (images[:, 0] * 255).round().to(torch.uint8).numpy())
    spawn_bounded(_grid_worker, (free_port(), str(tmp_path)), WORLD, timeout_s=180)
    rows = shown_rows(64)
    assert rows.max() >= 32  # rank 1's shard (rows 32-63) among them
    want = make_grid(
        paired_rows(images[rows], torch.zeros_like(images[rows]), PAIR_COLUMNS), nrow=PAIR_COLUMNS
    )
    for name in (
        "reconstructions.png",
        "images/reconstructions_glo_001.png",
        "images/reconstructions_glo_002.png",
    ):
        with Image.open(tmp_path / "run" / name) as im:
            got = np.asarray(im)
        assert got.shape[:2] == want.shape[:2], name
        for r in (0, 2):  # the originals' rows of tiles (1 and 3 are the reconstructions)
            band = slice(2 + r * 30, 2 + r * 30 + 28)
            assert np.array_equal(got[band], want[band, :, 0]), (name, r)


def _timeout_worker(rank: int, port: int, out: str, given_by: str) -> None:
    """Rank 0 runs a collective on each group while rank 1 does not answer; ``given_by`` "environment"
    ($GLANN_DIST_TIMEOUT_S) or "argument" (init_world's timeout_s) sets the timeout to 2 s."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK="0"
    )
    if given_by == "environment":
        os.environ["GLANN_DIST_TIMEOUT_S"] = "2"  # (the smallest allowed is 1 s)
        world = init_world(torch.device("cpu"))
    else:
        os.environ.pop("GLANN_DIST_TIMEOUT_S", None)  # 30 minutes, unless the argument is used
        world = init_world(torch.device("cpu"), timeout_s=2)
    results = []
    if rank == 1:  # a rank that stops answering without exiting (SIGSTOP, a hung node)
        time.sleep(12)
    else:  # the global BatchNorm's group too (it kept torch's 30 minutes: a review)
        for name, group in (("bn_group", world.bn_group), ("group", world.group)):
            start = time.monotonic()
            try:
                dist.all_gather([torch.empty(1), torch.empty(1)], torch.ones(1), group=group)
                results.append(f"{name} returned {time.monotonic() - start:.1f}")
            except RuntimeError:
                results.append(f"{name} timed out {time.monotonic() - start:.1f}")
    Path(out, f"rank{rank}").write_text("\n".join(results))
    dist.destroy_process_group()


def _both_groups_time_out(tmp_path: Path, given_by: str) -> None:
    spawn_bounded(_timeout_worker, (free_port(), str(tmp_path), given_by), WORLD, timeout_s=60)
    rank0 = (tmp_path / "rank0").read_text().splitlines()
    assert [line.rsplit(" ", 1)[0] for line in rank0] == ["bn_group timed out", "group timed out"], rank0
    assert all(float(line.split()[-1]) < 5 for line in rank0), rank0  # 2 s each, not 30 minutes


def test_the_collective_timeout_comes_from_the_environment(tmp_path, monkeypatch):
    from glann_ext.errors import ConfigError
    from glann_ext.train.world import dist_timeout_s

    assert dist_timeout_s() == 1800.0  # unset: 30 minutes
    monkeypatch.setenv("GLANN_DIST_TIMEOUT_S", "90.5")
    assert dist_timeout_s() == 90.5
    # 1e14 overflowed timedelta on every rank, 1e-9 made every collective fail at once (final audit)
    for bad in ("0", "-3", "nan", "inf", "ten", "1e14", "1e-9", "0.5"):
        monkeypatch.setenv("GLANN_DIST_TIMEOUT_S", bad)
        with pytest.raises(
            ConfigError, match=r"^\$GLANN_DIST_TIMEOUT_S must be a number of seconds in \[1, 604800\]"
        ):
            dist_timeout_s()
    monkeypatch.delenv("GLANN_DIST_TIMEOUT_S")
    _both_groups_time_out(tmp_path, "environment")


# Mutation tests (2026-12-07): each test below fails on a one-line bug that no earlier test caught.
def test_disagreement_names_rank_0_and_the_ranks_that_differ():
    assert disagreement([{"seed": 0}, {"seed": 0}]) is None
    assert disagreement([{"seed": 0, "lr": 1}, {"seed": 5, "lr": 1}]) == "seed: rank 0 has 0, rank 1 has 5"


def test_disagreement_shows_three_differing_ranks_and_counts_the_rest():
    # three ranks differ: all three shown, no "(0 more ranks differ)"
    four = [{"seed": 0}, {"seed": 1}, {"seed": 2}, {"seed": 3}]
    assert disagreement(four) == "seed: rank 0 has 0, rank 1 has 1, rank 2 has 2, rank 3 has 3"
    five = [*four, {"seed": 4}]
    assert disagreement(five) == (
        "seed: rank 0 has 0, rank 1 has 1, rank 2 has 2, rank 3 has 3 (1 more ranks differ)"
    )


def test_disagreement_names_at_most_limit_fields():
    a = {f"f{i}": 0 for i in range(5)}
    b = {f"f{i}": 1 for i in range(5)}
    text = disagreement([a, b])
    assert text.count("rank 0 has") == 3 and text.endswith("; and 2 more fields"), text
    assert "f3" not in text and "f4" not in text
    assert disagreement([a, b], limit=5).count("rank 0 has") == 5


def test_bounds_of_another_rank():
    """World.bounds(n, rank) is the shard of ``rank``, not of this process (the package itself asks only for
    its own; the argument is documented and public)."""
    world = World(rank=0, size=2)
    assert world.bounds(10) == (0, 5)
    assert world.bounds(10, rank=1) == (5, 10) == world.all_bounds(10)[1]


def test_global_batchnorm_runs_on_the_worlds_batchnorm_group():
    """Each GlobalBatchNorm's statistics go over world.bn_group, the second communicator, never the DDP one
    (world.group): interleaved with DDP's bucketed all-reduces on one NCCL communicator they can deadlock."""
    bn_group = object()
    world = World(rank=0, size=2, group=None, bn_group=bn_group, backend="gloo")
    net = global_batchnorm(
        nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Sequential(nn.BatchNorm2d(2))), world
    )
    norms = [m for m in net.modules() if isinstance(m, GlobalBatchNorm)]
    assert len(norms) == 2 and all(m.group is bn_group for m in norms)


def test_an_explicit_timeout_bounds_both_groups(tmp_path, monkeypatch):
    """A timeout handed to init_world, not the environment's, bounds the global BatchNorm's group too."""
    monkeypatch.delenv("GLANN_DIST_TIMEOUT_S", raising=False)
    _both_groups_time_out(tmp_path, "argument")
