"""Run folders you can trust: planted pickles never run, manifests cannot point outside the run, one writer
per folder, planted links are replaced rather than followed, failed starts leave nothing behind, and every
user error is one line with exit status 2."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from glann_testing import (
    Interrupt,
    Payload,
    blob_images,
    child_kwargs,
    interrupt_at,
    plant_pickle,
    swap_in_after_the_check,
    tiny_config,
)

from glann_ext._io import (
    TEMP_NAME,
    FolderLock,
    NotARegularFile,
    append_line,
    atomic_write,
    load_tensors_only,
    read_regular,
    remove_stale_temps,
)
from glann_ext.cli import main
from glann_ext.errors import CheckpointError, RunFolderError
from glann_ext.images import save_grid
from glann_ext.metrics.classifier import DomainClassifier, cache_path
from glann_ext.models import load_model_file, read_model_file
from glann_ext.train import checkpoint as ckpt
from glann_ext.train import load_model, train
from glann_ext.train import upgrade as up
from glann_ext.train.config import MAXIMA

TINY = ["--preset", "tiny", "--threads", "1", "--no-progress", "--glo-epochs", "1", "--imle-epochs", "1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, blob_file) -> Path:
    run = tmp_path_factory.mktemp("trust") / "run"
    train(
        tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=1), run, progress=False, log=lambda s: None
    )
    return run


def _copy(run: Path, tmp_path: Path, name: str = "copy") -> Path:
    dst = tmp_path / name
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _one_line_error(capsys, *argv: str) -> str:
    """Runs ``glann argv``; asserts exit status 2 and exactly one line on stderr; returns it."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    return err


# -- 1. loading runs no code ---------------------------------------------------------------------------
@pytest.mark.filterwarnings("error::UserWarning")  # torch's notice about a pickle's protocol is silenced too
def test_planted_pickles_never_run(finished, tmp_path, capsys, blob_file):
    marker = tmp_path / "PWNED"
    run = _copy(finished, tmp_path)
    step = ckpt.checkpoint_dir(run) / ckpt.read_manifest(run)["step_dir"]
    for victim in (step / "main.pt", step / "shard-00000-of-00001.pt"):
        saved = victim.read_bytes()
        plant_pickle(victim, marker)
        (run / "model.safetensors").unlink(missing_ok=True)
        with pytest.raises(CheckpointError, match="not loaded, since loading such a file can run code"):
            load_model(run)
        assert "can run code" in _one_line_error(
            capsys, "sample", "--run", str(run), "--grid", str(tmp_path / "s.png")
        )
        assert "can run code" in _one_line_error(capsys, "train", "--out", str(run), "--no-progress")
        assert "can run code" in _one_line_error(capsys, "reshard", "--run", str(run), "--world-size", "2")
        victim.write_bytes(saved)
    plant_pickle(run / "model.pt", marker)  # a 0.1 model file: named, never opened
    (run / "model.safetensors").unlink(missing_ok=True)
    shutil.rmtree(run / "checkpoints")
    assert "glann upgrade" in _one_line_error(capsys, "sample", "--run", str(run))
    assert "--trust-pickle" in _one_line_error(capsys, "upgrade", "--run", str(run))
    weights = tmp_path / "vgg.pth"
    plant_pickle(weights, marker)
    err = _one_line_error(
        capsys, "train", "--dataset", blob_file, "--out", str(tmp_path / "v"), *TINY,
        "--vgg-weights", str(weights), "--vgg-weight", "0.1",
    )  # fmt: skip
    assert "not a loadable tensor file" in err and "can run code" in err and "weights_only" not in err
    assert not marker.exists()
    weights.write_text('{"a": 1}')  # a text file: not said to hold objects that could run code
    err = _one_line_error(
        capsys, "train", "--dataset", blob_file, "--out", str(tmp_path / "v"), *TINY,
        "--vgg-weights", str(weights), "--vgg-weight", "0.1",
    )  # fmt: skip
    assert "not a torch.save file" in err and "can run code" not in err, err


@pytest.mark.filterwarnings("error::UserWarning")
def test_a_classifier_cache_that_is_not_ours_is_refused_and_never_run(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 14, 14, generator=g), torch.randint(3, (40,), generator=g)
    cache = tmp_path / "lenet"
    DomainClassifier.load_or_train("d", x, y, x, y, cache_dir=cache, num_classes=3, epochs=1)
    path = cache_path(cache, "d", seed=0, epochs=1)
    good = torch.load(path, weights_only=True)
    marker = tmp_path / "PWNED"

    def forged(**meta):
        return {"meta": {**good["meta"], **meta}, "state_dict": good["state_dict"]}

    cases = {
        "never loaded": lambda: plant_pickle(path, marker),  # a bare pickle
        "can run code": lambda: torch.save({"meta": Payload(marker)}, path),  # objects in an archive
        "not a torch.save file": lambda: path.write_bytes(b"not a file of ours"),
        "not a torch.save archive": lambda: torch.save(  # a legacy (bare pickle) torch file of tensors
            good, path, _use_new_zipfile_serialization=False
        ),
        "no 'meta' and 'state_dict'": lambda: torch.save([good["state_dict"]], path),
        "in_channels=True": lambda: torch.save(forged(in_channels=True), path),
        # sizes the file's own tensors do not have: refused before any network of that size is built
        "fc1.weight": lambda: torch.save(forged(image_size=[100_000, 100_000]), path),
        "head.weight": lambda: torch.save(forged(num_classes=4), path),
        "conv2.weight": lambda: torch.save(
            {"meta": good["meta"], "state_dict": {k: v for k, v in good["state_dict"].items() if k != "conv2.weight"}},
            path,
        ),
        # NaN weights scored every feature NaN: "features1 contains NaN", naming neither file nor cure
        "fc1.bias holds NaN": lambda: torch.save(
            {"meta": good["meta"], "state_dict": {**good["state_dict"], "fc1.bias": good["state_dict"]["fc1.bias"] * float("nan")}},
            path,
        ),
    }  # fmt: skip
    for needle, write in cases.items():
        write()
        with pytest.raises(CheckpointError, match="not a cached classifier") as err:
            DomainClassifier.load(path)
        assert needle in str(err.value) and str(path) in str(err.value) and "delete it" in str(err.value)
    assert not marker.exists()
    torch.save(good, path)
    assert DomainClassifier.load(path).test_accuracy == good["meta"]["test_accuracy"]
    with pytest.raises(ValueError, match="expected 4"):  # a cache of another shape: a UsageError
        DomainClassifier.load(path, expect={"num_classes": 4})


# added since, with other defaults
V01_LACKS = ("latent_adam_steps", "imle_lr_schedule", "imle_betas", "balance_draws", "balance_quantile")


def _as_v01(run: Path, **changes: object) -> None:
    """Rewrite a finished run in glann_ext 0.1's formats (pickled model.pt, RNG state in main.pt), with
    ``changes`` to its config (in every copy: config.json, model.pt and the checkpoint)."""
    tensors, meta = read_model_file(run / "model.safetensors")

    def net(p: str) -> dict:
        return {k[len(p) + 1 :]: v for k, v in tensors.items() if k.startswith(p + ".")}

    # 0.1's configs lack the fields added since with other defaults (0.1 computed latent_adam_steps "global",
    # imle_lr_schedule "constant", imle_betas = betas)
    cfg = {**{k: v for k, v in meta["config"].items() if k not in V01_LACKS}, **changes}
    old = {"cfg": {**cfg, "extra": {}}, "image_shape": tuple(meta["image_shape"]), "G": net("G"),
           "codes": tensors["codes"], "T": net("T")}  # fmt: skip
    torch.save(old, run / "model.pt")
    (run / "config.json").write_text(json.dumps({**cfg, "extra": {}}))
    (run / "model.safetensors").unlink()
    manifest = ckpt.read_manifest(run)
    main_pt = ckpt.checkpoint_dir(run) / manifest["step_dir"] / "main.pt"
    state = torch.load(main_pt, weights_only=True)
    state["config"] = {**cfg, "extra": {}}
    state["rng"] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (0.1 saved the legacy global state)
        "python": random.getstate(),
    }
    torch.save(state, main_pt)
    (ckpt.checkpoint_dir(run) / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))


def _files(run: Path, lock: bool = False) -> dict[Path, bytes]:
    """Every file of ``run`` and its bytes (without ``lock``, not the lock file a writer leaves: its pid)."""
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and (lock or p.name != ".lock")}


def test_upgrade_asks_for_trust_only_where_it_unpickles(finished, tmp_path, capsys):
    """A current run has no pickles to convert: ``glann upgrade`` says so and leaves it as it was; it asked
    for --trust-pickle first, which then bought nothing (found by a review). A 0.1 run is still refused
    without it, before anything in the folder changes."""
    run = _copy(finished, tmp_path)
    files = _files(run)
    assert main(["upgrade", "--run", str(run)]) == 0
    assert "nothing to upgrade" in capsys.readouterr().out
    assert _files(run) == files
    config = json.loads((run / "config.json").read_text())
    # 0.1's config and no pickles: no trust asked, and the rewrite is reported (it said "nothing to upgrade")
    (run / "config.json").write_text(json.dumps({**config, "extra": {}}))
    assert main(["upgrade", "--run", str(run)]) == 0
    assert "config.json (the old behaviour of fields it lacked kept)" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text()) == config
    _as_v01(run, betas=[0.6, 0.99])
    (run / ".lock").unlink()
    stale = run / "config.json.abcd1234.tmp"
    stale.write_text("x")
    files = _files(run, lock=True)
    assert "--trust-pickle" in _one_line_error(capsys, "upgrade", "--run", str(run))
    assert _files(run, lock=True) == files  # not even a lock file (the check ran inside the lock once)


def test_upgrade_converts_a_v01_run_that_then_loads_and_resumes(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    before = load_model(run).export()[0]
    del before["code_accept"]  # 0.1 sampled T(e) plainly: its model has no balanced-sampling table
    _as_v01(run, betas=[0.6, 0.99])  # betas of its own: 0.1 used them in both stages
    assert "glann upgrade --run" in _one_line_error(capsys, "sample", "--run", str(run))
    assert main(["upgrade", "--run", str(run), "--trust-pickle"]) == 0
    assert "model.pt -> model.safetensors" in capsys.readouterr().out
    after = load_model(run).export()[0]
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert (run / "model.pt.glann-0.1").exists() and not (run / "model.pt").exists()
    assert ckpt.read_manifest(run)["format"] == ckpt.FORMAT_VERSION
    saved = json.loads((run / "config.json").read_text())
    assert {k: saved[k] for k in V01_LACKS[:2]} == {
        "latent_adam_steps": "global",
        "imle_lr_schedule": "constant",
    }
    assert saved["imle_betas"] == saved["betas"] == [0.6, 0.99]
    assert saved["balance_draws"] == 0.0 and not load_model(run).balanced
    assert main(["train", "--out", str(run), "--imle-epochs", "2", "--no-progress"]) == 0  # resumes
    assert main(["upgrade", "--run", str(run), "--trust-pickle"]) == 0
    assert "nothing to upgrade" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("config.json", b"\xff\xfe{}", "not UTF-8 text"),
        ("config.json", b"[1, 2]", "expected a JSON object of config fields, got list"),
        ("checkpoints/manifest.json", b"\xff{}", "unreadable"),
        ("checkpoints/manifest.json", b"[1]", "expected a JSON object, got list"),
        ("checkpoints/manifest.json", b"{", "unreadable"),
    ],
)
def test_upgrade_names_a_config_or_manifest_that_is_not_a_json_object(
    finished, tmp_path, capsys, name, content, expected
):
    run = _copy(finished, tmp_path)
    (run / name).write_bytes(content)
    assert expected in _one_line_error(capsys, "upgrade", "--run", str(run), "--trust-pickle")


@pytest.mark.parametrize("escape", ["step_dir", "shards"])
def test_upgrade_never_unpickles_what_a_manifest_names_outside(finished, tmp_path, capsys, escape):
    """--trust-pickle trusts the run's own files only: a 0.1 manifest whose step folder or shard name leads
    out of checkpoints/ (through a folder that exists, so the path resolves) is refused before anything is
    unpickled or rewritten."""
    run = _copy(finished, tmp_path)
    _as_v01(run)
    marker, outside = tmp_path / "PWNED", tmp_path / "outside" / "step-00000001"
    for name in ("main.pt", "evil.pt"):
        plant_pickle(outside / name, marker)
    path = ckpt.checkpoint_dir(run) / "manifest.json"
    manifest = json.loads(path.read_text())
    step = ckpt.checkpoint_dir(run) / manifest["step_dir"]
    if escape == "step_dir":
        manifest["step_dir"] = "../../outside/step-00000001"
    else:
        (step / "shard-x").mkdir()
        manifest["shards"] = ["shard-x/../../../../outside/step-00000001/evil.pt"]
    path.write_text(json.dumps(manifest))
    before = (step / "main.pt").read_bytes()
    err = _one_line_error(capsys, "upgrade", "--run", str(run), "--trust-pickle")
    assert "its manifest names files outside checkpoints/; not converted" in err
    assert not marker.exists() and (step / "main.pt").read_bytes() == before


@pytest.mark.parametrize("damage", ["no bounds", "bounds of another world size"])
def test_upgrade_checks_the_converted_manifest_before_it_rewrites_a_file(finished, tmp_path, capsys, damage):
    """A 0.1 manifest the current format cannot hold is a one-line error that leaves every file as it was,
    so upgrading again says the same. It was checked after the files were rewritten: without bounds, a
    KeyError traceback; with bad ones, a format-2 manifest on disk that nothing loads, and a second upgrade
    then said "nothing to upgrade" (a review)."""
    run = _copy(finished, tmp_path)
    _as_v01(run)
    path = ckpt.checkpoint_dir(run) / "manifest.json"
    manifest = json.loads(path.read_text())
    if damage == "no bounds":
        del manifest["bounds"]
    else:
        manifest["world_size"] = 3
    path.write_text(json.dumps(manifest))
    files = _files(run)
    for _ in range(2):
        err = _one_line_error(capsys, "upgrade", "--run", str(run), "--trust-pickle")
        assert str(path) in err and ("no 'bounds'" in err or "shard names" in err), err
        assert _files(run) == files


def test_upgrade_clears_the_temp_files_of_killed_writes(finished, tmp_path):
    """upgrade holds the folder's lock, so the temp files a killed write left are stale: it removes them
    (atomic_write's names only), as train and reshard do."""
    run = _copy(finished, tmp_path)
    ours = [run / "config.json.abcd1234.tmp", run / "checkpoints" / "manifest.json.k3j4h5g6.tmp"]
    for p in ours:
        p.write_text("x")
    assert main(["upgrade", "--run", str(run), "--trust-pickle"]) == 0
    assert not any(p.exists() for p in ours)


# -- 2. manifests cannot point outside -----------------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [
        {"step_dir": "../../outside"},
        {"step_dir": "/etc"},
        {"shards": ["../../../etc/passwd"]},
        {"shards": ["/tmp/x.pt"]},
        {"bounds": [[0, 1]]},
        {"bounds": [1]},  # a list of no pairs: `list(1)` raised a TypeError
        {"world_size": "1"},
        {"world_size": True},  # JSON true is no count (found by mutation testing)
        {"total": None},
        {"phase": "gan"},
        {"seq": -1, "step_dir": "step--0000001"},
    ],
    ids=lambda c: f"{next(iter(c))}={next(iter(c.values()))}",
)
def test_an_escaping_or_broken_manifest_is_refused(finished, tmp_path, capsys, change):
    run = _copy(finished, tmp_path)
    (run / "model.safetensors").unlink()
    path = ckpt.checkpoint_dir(run) / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(CheckpointError, match="manifest"):
        load_model(run)
    err = _one_line_error(capsys, "sample", "--run", str(run))
    assert "manifest" in err and ("seq" not in change or "names an impossible step" in err), err
    assert "manifest" in _one_line_error(capsys, "train", "--out", str(run), "--no-progress")


def test_run_files_nested_too_deeply_are_one_line_errors_or_torn_lines(finished, tmp_path, capsys):
    """A manifest nested 100,000 deep raised a RecursionError in train, sample and reshard; a metrics.jsonl
    line that deep stopped the resume that drops the rows of unfinished epochs."""
    deep = "[" * 100_000 + "]" * 100_000
    run = _copy(finished, tmp_path)
    manifest = ckpt.checkpoint_dir(run) / "manifest.json"
    saved = manifest.read_text()
    manifest.write_text(deep)
    for argv in (
        ["train", "--out", str(run), "--no-progress"],
        ["reshard", "--run", str(run), "--world-size", "1"],
    ):
        assert "unreadable manifest (JSON nested too deeply)" in _one_line_error(capsys, *argv)
    manifest.write_text(saved)
    with (run / "metrics.jsonl").open("a") as f:
        f.write(deep + "\n")
    assert (
        main(["train", "--out", str(run), "--imle-epochs", "2", "--no-progress"]) == 0
    )  # a torn line: dropped
    assert deep not in (run / "metrics.jsonl").read_text()


def _forge_step(run: Path, forge) -> None:
    """Rewrite the latest step's main.pt and shard 0 with ``forge(main, rows)``, which changes them in place."""
    step = ckpt.checkpoint_dir(run) / ckpt.read_manifest(run)["step_dir"]
    main_state, shard = ckpt.load(step / ckpt.MAIN_FILE), ckpt.load(step / ckpt.shard_name(0, 1))
    forge(main_state, shard["rows"])
    ckpt.save_atomic(main_state, step / ckpt.MAIN_FILE)
    ckpt.save_atomic(shard, step / ckpt.shard_name(0, 1))


@pytest.mark.parametrize(
    ("forge", "needle"),
    [
        (
            lambda m, r: m["imle"].update(tally={"loss": "abc", "steps": 1, "seconds": 0.0}),
            "imle.tally must be",
        ),
        (lambda m, r: m["imle"].update(tally={"x": 1}), "imle.tally must be"),
        (lambda m, r: r.pop("glo.codes"), "the shard holds no rows 'glo.codes', which main.pt names"),
        (
            lambda m, r: r.update({"imle.matched_noise": torch.zeros(96, 7)}),
            "imle matched_noise is (torch.float32, (96, 7)), expected (torch.float32, (96, 4))",
        ),
        (
            lambda m, r: r.update({"imle.threshold": torch.zeros(96, 5)}),
            "imle threshold is (torch.float32, (96, 5))",
        ),
        (
            lambda m, r: r.update({"imle.since_match": torch.zeros(96)}),
            "imle since_match is (torch.float32, (96,)), expected (torch.int64, (96,))",
        ),
        (
            lambda m, r: r.update({"imle.since_match": torch.full((96,), -(10**9))}),
            "imle since_match must be >= 0",
        ),
        (
            lambda m, r: m["imle"].update(step_in_epoch=10**6),
            "step_in_epoch 1000000 exceeds the 3 steps of an epoch",
        ),
        # the codes were copied in with copy_: a width-1 table broadcast, an integer one cast, and codes off
        # the sphere trained on, each into a model file the run's own loader then refused
        (
            lambda m, r: r.update({"glo.codes": r["glo.codes"][:, :1].contiguous()}),
            "glo codes is (torch.float32, (96, 1)), expected (torch.float32, (96, 16))",
        ),
        (
            lambda m, r: r.update({"glo.codes": torch.ones(96, 16, dtype=torch.int64)}),
            "glo codes is (torch.int64, (96, 16)), expected (torch.float32, (96, 16))",
        ),
        (
            lambda m, r: r["glo.codes"].mul_(50),
            "codes must lie on the unit sphere (norms within 0.0001 of 1)",
        ),
        (  # the fused step takes an int64 count: 10**30 failed inside it
            lambda m, r: m["glo"]["opt_z"].update(step=10**30),
            "step must be a whole number in [0, 2**62), got an integer of 100 bits",
        ),
        (  # past a float's range: an OverflowError, not a ValueError, escaped
            lambda m, r: m["glo"]["opt_z"].update(step=10**400),
            "step must be a whole number in [0, 2**62), got an integer of 1329 bits",
        ),
        (
            lambda m, r: r.update({"glo.opt_z.exp_avg": r["glo.opt_z.exp_avg"].long()}),
            "exp_avg must be floating of shape (96, 16), got (torch.int64, (96, 16))",
        ),
    ],
    ids=[
        "tally-type",
        "tally-keys",
        "no-codes",
        "noise-width",
        "threshold-width",
        "since-dtype",
        "since-negative",
        "step",
        "codes-width",
        "codes-int",
        "codes-off-sphere",
        "adam-step",
        "adam-step-past-float",
        "adam-moment-dtype",
    ],
)
def test_a_forged_trainer_state_is_a_one_line_error(tmp_path, blob_file, capsys, forge, needle):
    """Each of these ended in a traceback (KeyError, TypeError, or a RuntimeError mid-epoch), or ran an epoch
    of no steps, instead of naming what is wrong with the checkpoint."""
    run = tmp_path / "run"
    cfg = tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=1, imle_adaptive=True, noise_dim=4)
    train(cfg, run, progress=False, log=lambda s: None)
    _forge_step(run, forge)
    err = _one_line_error(capsys, "train", "--out", str(run), "--imle-epochs", "2", "--no-progress")
    assert needle in err, err
    if "glo.codes" in needle:  # a reader of a run without its model file gathers the codes from the shards
        (run / "model.safetensors").unlink()
        assert "the checkpoint's shards hold no rows 'glo.codes'" in _one_line_error(
            capsys, "sample", "--run", str(run)
        )


def test_every_per_target_imle_state_is_saved_in_the_shards_not_main_pt(tmp_path, blob_file):
    """Each rank saves its own targets' rows to its shard; a per-target tensor left in main.pt (rank 0's
    replicated state) would hand rank 1 rank 0's rows on a sharded resume, while one process still
    round-trips it (dropping since_match from the row keys passed every single-process test)."""
    run = tmp_path / "run"
    cfg = tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=1, imle_adaptive=True, noise_dim=4)
    train(cfg, run, progress=False, log=lambda s: None)
    step = ckpt.checkpoint_dir(run) / ckpt.read_manifest(run)["step_dir"]
    main_state, rows = ckpt.load(step / ckpt.MAIN_FILE), ckpt.load(step / ckpt.shard_name(0, 1))["rows"]
    per_target = {"matched_noise", "threshold", "since_match"}
    assert {f"imle.{k}" for k in per_target} <= rows.keys() and {
        "glo.codes",
        "glo.opt_z.exp_avg",
    } <= rows.keys()
    n = len(rows["glo.codes"])
    left = [
        k for k, v in main_state["imle"].items() if isinstance(v, torch.Tensor) and v.dim() and len(v) == n
    ]
    assert not left, left
    assert all(main_state["imle"][k] == {"__rows__": ""} for k in per_target)  # main.pt only points to them


@pytest.mark.parametrize(
    ("forge", "needle"),
    [
        (lambda m: m["glo"].pop("G"), "(no 'G')"),
        (lambda m: m["glo"].update(G=[1, 2]), "the checkpoint does not describe a usable model ("),
        (
            lambda m: m["glo"]["G"].update({next(iter(m["glo"]["G"])): "x"}),
            "does not describe a usable model (",
        ),
        (lambda m: m["imle"].pop("generator"), "(no 'generator')"),
    ],
    ids=["no-G", "G-list", "G-value", "no-T"],
)
def test_a_reader_of_a_forged_checkpoint_gets_a_one_line_error(finished, tmp_path, capsys, forge, needle):
    """A run read without its model file builds the model from the checkpoint: a main.pt without G or T's
    weights, or with them of another type, was a KeyError or AttributeError traceback."""
    run = _copy(finished, tmp_path)
    (run / "model.safetensors").unlink()
    main_pt = ckpt.checkpoint_dir(run) / ckpt.read_manifest(run)["step_dir"] / ckpt.MAIN_FILE
    saved = ckpt.load(main_pt)
    forge(saved)
    ckpt.save_atomic(saved, main_pt)
    err = _one_line_error(capsys, "sample", "--run", str(run))
    assert f"{run}: the checkpoint does not describe a usable model" in err and needle in err, err


def test_a_shard_of_other_rows_and_a_reshard_beyond_two_rows_a_process_are_one_line_errors(
    finished, tmp_path, capsys
):
    run = _copy(finished, tmp_path)
    (run / "model.safetensors").unlink()
    shard_pt = ckpt.checkpoint_dir(run) / ckpt.read_manifest(run)["step_dir"] / ckpt.shard_name(0, 1)
    shard = torch.load(shard_pt, weights_only=True)
    torch.save({**shard, "start": 1, "stop": 97}, shard_pt)  # the same number of rows, one row further on
    err = _one_line_error(capsys, "train", "--out", str(run), "--no-progress")
    assert "shard 0 holds rows 1..97, expected (0, 96)" in err
    torch.save(shard, shard_pt)
    assert "at most 48" in _one_line_error(capsys, "reshard", "--run", str(run), "--world-size", "49")
    assert main(["reshard", "--run", str(run), "--world-size", "48"]) == 0  # 2 rows each: the most allowed
    assert ckpt.read_manifest(run)["world_size"] == 48


def test_a_dataset_that_changed_size_under_a_checkpoint_is_named(tmp_path, capsys):
    """A run's dataset file that now holds fewer images than its checkpoint's codes is refused by name (found
    by mutation testing: without that check the shard-bounds check refused it, naming neither count)."""
    data = tmp_path / "blobs.npy"
    np.save(data, blob_images(40, 28))
    run = tmp_path / "run"
    train(tiny_config(dataset=str(data), glo_epochs=1), run, stage="glo", progress=False, log=lambda s: None)
    np.save(data, blob_images(30, 28))
    err = _one_line_error(capsys, "train", "--out", str(run), "--no-progress")
    assert "holds 40 images' codes but the dataset now has 30" in err, err


def test_a_resume_names_a_missing_file_of_its_checkpoint_step(finished, tmp_path, capsys):
    """Resuming from a step whose main.pt or shard is gone names the file and the incomplete checkpoint (found
    by mutation testing: without that check the error was the loader's "cannot load checkpoint")."""
    for name in ("main.pt", ckpt.shard_name(0, 1)):
        run = _copy(finished, tmp_path, name)
        (run / "model.safetensors").unlink()
        victim = ckpt.checkpoint_dir(run) / ckpt.read_manifest(run)["step_dir"] / name
        victim.unlink()
        err = _one_line_error(capsys, "train", "--out", str(run), "--no-progress")
        assert f"{victim}: missing; the checkpoint named by" in err and "is incomplete" in err, err


def test_a_reshard_to_the_processes_it_has_changes_nothing(finished, tmp_path, capsys):
    """Resharding a checkpoint for the number of processes it already has leaves it as it is (found by mutation
    testing: without that check the step was rewritten as a new one)."""
    run = _copy(finished, tmp_path)
    before = ckpt.read_manifest(run)
    assert main(["reshard", "--run", str(run), "--world-size", "1"]) == 0
    assert "already sharded for 1 process(es); nothing to do" in capsys.readouterr().out
    assert ckpt.read_manifest(run) == before


def test_a_reshard_clears_the_step_folder_a_killed_job_had_begun(finished, tmp_path):
    """A step folder no manifest names (a killed job's) is emptied before a reshard writes its step there, so
    the new step holds its own files only (found by mutation testing: the clearing could go unseen)."""
    run = _copy(finished, tmp_path)
    seq = ckpt.read_manifest(run)["seq"] + 1
    begun = ckpt.checkpoint_dir(run) / f"step-{seq:08d}"
    begun.mkdir()
    (begun / ckpt.shard_name(5, 9)).write_bytes(b"left by a killed job")
    assert main(["reshard", "--run", str(run), "--world-size", "2"]) == 0
    assert ckpt.read_manifest(run)["step_dir"] == begun.name
    assert sorted(p.name for p in begun.iterdir()) == ["main.pt", *(ckpt.shard_name(r, 2) for r in (0, 1))]


def test_a_checkpoint_config_with_a_number_for_a_key_is_a_one_line_error(finished, tmp_path, capsys):
    """A forged main.pt whose config holds an unknown integer key beside an unknown name (torch.load allows
    it) is named as an invalid config when a run without config.json resumes from it (found by mutation
    testing: its TypeError, from sorting the unknown keys, was a traceback)."""
    run = _copy(finished, tmp_path)
    (run / "config.json").unlink()
    main_pt = ckpt.checkpoint_dir(run) / ckpt.read_manifest(run)["step_dir"] / "main.pt"
    good = torch.load(main_pt, weights_only=True)
    torch.save({**good, "config": {**good["config"], 1: 2, "x": 3}}, main_pt)
    err = _one_line_error(capsys, "train", "--out", str(run), "--no-progress")
    assert "the checkpoint's config is not valid" in err, err


def test_each_run_marker_alone_makes_a_run_folder(tmp_path):
    """A folder holding any one of RUN_MARKERS, the model file alone included, is a run folder; one of the
    user's files is not (found by mutation testing: dropping model.safetensors from the markers went unseen)."""
    for marker in ("config.json", "checkpoints/manifest.json", "model.safetensors", "model.pt"):
        folder = tmp_path / marker.replace("/", "-")
        (folder / marker).parent.mkdir(parents=True)
        (folder / marker).write_text("")
        assert ckpt.is_run_folder(folder), marker
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("")
    assert not ckpt.is_run_folder(tmp_path / "user") and not ckpt.is_run_folder(tmp_path / "none")


def test_a_manifest_missing_a_key_is_named(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    (run / "model.safetensors").unlink()
    path = ckpt.checkpoint_dir(run) / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["shards"]
    path.write_text(json.dumps(manifest))
    assert "manifest has no 'shards'" in _one_line_error(capsys, "sample", "--run", str(run))


# -- 3. one writer ---------------------------------------------------------------------------------------
def test_a_second_writer_is_refused_and_the_lock_dies_with_its_holder(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    with FolderLock(run):
        err = _one_line_error(capsys, "train", "--out", str(run), "--imle-epochs", "2", "--no-progress")
        assert f"run folder in use (pid {os.getpid()})" in err
        assert "in use" in _one_line_error(capsys, "reshard", "--run", str(run), "--world-size", "2")
        assert "in use" in _one_line_error(capsys, "upgrade", "--run", str(run), "--trust-pickle")
        assert main(["sample", "--run", str(run), "--grid", str(tmp_path / "s.png")]) == 0  # readers read
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import sys, time; from glann_ext._io import FolderLock; "
         f"FolderLock({str(run)!r}).acquire(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, **child_kwargs(tmp_path),
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunFolderError, match=f"pid {holder.pid}"):
        train(None, run, progress=False)
    holder.kill()
    holder.wait()
    assert main(["train", "--out", str(run), "--imle-epochs", "2", "--no-progress"]) == 0


# -- 4. links are replaced, not followed ---------------------------------------------------------------
def test_planted_links_are_replaced_not_followed(tmp_path, blob_file):
    run = tmp_path / "run"
    cfg = tiny_config(dataset=blob_file, glo_epochs=2, imle_epochs=2, ckpt_every=1, sample_every=1)
    with pytest.raises(Interrupt):
        train(cfg, run, progress=False, on_step=interrupt_at("imle", 2), log=lambda s: None)
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "victim.txt").write_text("keep me")
    shutil.copy(run / "config.json", outside / "config.json")  # read through a link: fine; never written
    for name in ("metrics.jsonl", "samples.png", "reconstructions.png", "config.json"):
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(outside / ("config.json" if name == "config.json" else "victim.txt"))
    shutil.rmtree(run / "images")
    (run / "images").symlink_to(outside / "dir")
    cfg_before = (outside / "config.json").read_bytes()
    assert main(["train", "--out", str(run), "--no-progress"]) == 0
    assert (outside / "victim.txt").read_text() == "keep me" and not list((outside / "dir").iterdir())
    assert (outside / "config.json").read_bytes() == cfg_before
    for name in ("metrics.jsonl", "samples.png", "reconstructions.png", "images"):
        assert (run / name).exists() and not (run / name).is_symlink(), name
    assert any((run / "images").iterdir())


def test_a_run_folder_given_through_a_link_is_resumed_not_replaced(tmp_path, blob_file):
    target, link = tmp_path / "target", tmp_path / "link"
    cfg = tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=2, ckpt_every=1)
    with pytest.raises(Interrupt):
        train(cfg, target, progress=False, on_step=interrupt_at("imle", 2), log=lambda s: None)
    link.symlink_to(target)
    assert main(["train", "--out", str(link), "--no-progress"]) == 0
    assert link.is_symlink() and (target / "model.safetensors").exists()
    rows = [json.loads(x) for x in (target / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows] == [
        ("glo", 1),
        ("imle", 1),
        ("imle", 2),
    ]  # GLO not redone
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(RunFolderError, match="not a folder"):
        FolderLock(tmp_path / "dangling").acquire()
    assert (tmp_path / "dangling").is_symlink()


# -- 5. nothing lost: rows, temps ------------------------------------------------------------------------
def test_kill_and_resume_keeps_every_metrics_row_and_leaves_no_temp(tmp_path, blob_file):
    args = ["--dataset", blob_file, "--preset", "tiny", "--threads", "1", "--no-progress", "--glo-epochs", "4",
            "--imle-epochs", "4", "--ckpt-every", "1"]  # fmt: skip
    assert main(["train", "--out", str(tmp_path / "straight"), *args]) == 0
    killed = tmp_path / "killed"
    for kills in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "glann_ext.cli", "train", "--out", str(killed), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **child_kwargs(tmp_path))  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            rows = (
                (killed / "metrics.jsonl").read_text().splitlines()
                if (killed / "metrics.jsonl").exists()
                else []
            )
            if len(rows) >= 2 * kills + 1:
                break
            time.sleep(0.01)
        proc.kill()
        proc.wait()
    (killed / "checkpoints" / "big.bin.k3j4h5g6.tmp").write_bytes(b"x" * 1000)  # a killed write's leftover
    assert main(["train", "--out", str(killed), "--no-progress"]) == 0
    assert not list(killed.rglob("*.tmp"))

    def keys(r: list) -> list:
        return [(x["stage"], x["epoch"], x["step"], x["steps"], x["loss"]) for x in r]

    rows = [
        [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]
        for p in (tmp_path / "straight", killed)
    ]
    assert keys(rows[0]) == keys(rows[1])


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_only_our_temp_files_are_removed_and_only_in_run_folders(finished, tmp_path, blob_file, capsys):
    # a folder that is not a run: every command refuses it and leaves it exactly as it was (no .lock)
    user = tmp_path / "user"
    (user / "deep" / "er").mkdir(parents=True)
    for p in (user / "a.tmp", user / "deep" / "er" / "work.tmp", user / "notes.abcdefgh.tmp"):
        p.write_text("keep")
    before = _tree(user)
    assert "not a glann run folder" in _one_line_error(
        capsys, "train", *TINY, "--dataset", blob_file, "--out", str(user)
    )
    assert "no checkpoint to reshard" in _one_line_error(
        capsys, "reshard", "--run", str(user), "--world-size", "1"
    )
    assert "not a glann run folder" in _one_line_error(
        capsys, "upgrade", "--run", str(user), "--trust-pickle"
    )
    assert _tree(user) == before
    # a run folder: atomic_write's temp names in the folders a run writes go; the user's own files stay
    run = _copy(finished, tmp_path)
    (run / "mine").mkdir()
    keep = [run / "x.tmp", run / "mine" / "w.tmp", run / "mine" / "config.json.abcd1234.tmp"]
    ours = [run / "config.json.abcd1234.tmp", run / "checkpoints" / "manifest.json.k3j4h5g6.tmp"]
    for p in keep + ours:
        p.write_text("x")
    assert main(["reshard", "--run", str(run), "--world-size", "1"]) == 0
    assert all(p.exists() for p in keep) and not any(p.exists() for p in ours)
    for p in ours:
        p.write_text("x")
    assert main(["upgrade", "--run", str(run), "--trust-pickle"]) == 0
    assert main(["train", "--out", str(run), "--no-progress"]) == 0  # finished: resumes to the end at once
    assert all(p.exists() for p in keep) and not any(p.exists() for p in ours)


def test_folder_locked_excludes_a_second_holder_and_runs_unlocked_where_folders_cannot_be_locked(
    tmp_path, monkeypatch
):
    import fcntl

    from glann_ext._io import folder_locked

    with folder_locked(tmp_path / "a", "busy") as folder:
        assert folder.is_dir()
        with pytest.raises(RunFolderError, match=r"a: busy"), folder_locked(tmp_path / "a", "busy"):
            pass
    assert not (tmp_path / "a").exists()  # made for the lock and left empty: removed

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    out = tmp_path / "b"
    with folder_locked(out, "busy"):  # a second caller that also found it missing (a race) is refused...
        monkeypatch.setattr(type(out), "exists", lambda self: False if self == out else os.path.exists(self))
        with pytest.raises(RunFolderError), folder_locked(out, "busy"):
            pass
        monkeypatch.undo()
        assert out.is_dir()  # ...and leaves the holder's folder in place
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with folder_locked(tmp_path, "busy"), folder_locked(tmp_path, "busy"):
        pass  # both run: the lock is a guard, not a requirement


def test_the_io_helpers_neither_follow_links_nor_touch_folders(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    (run / "checkpoints").mkdir(parents=True)
    outside.mkdir()
    (outside / "victim.txt").write_text("keep me")
    (run / "resumes.jsonl").symlink_to(outside / "victim.txt")
    append_line(run / "resumes.jsonl", "{}")  # a planted link is replaced, not appended through
    assert (outside / "victim.txt").read_text() == "keep me"
    assert not (run / "resumes.jsonl").is_symlink() and (run / "resumes.jsonl").read_text() == "{}\n"
    # a temp-named folder is not a temp file; a linked subfolder is not entered
    (run / "data.abcd1234.tmp").mkdir()
    (outside / "x.abcd1234.tmp").write_text("keep")
    (run / "images").symlink_to(outside)
    (run / "checkpoints" / "step-00000001").symlink_to(outside)
    assert remove_stale_temps(run) == []
    assert (run / "data.abcd1234.tmp").is_dir() and (outside / "x.abcd1234.tmp").read_text() == "keep"


def test_the_io_helpers_read_and_append_only_regular_files(tmp_path):
    (tmp_path / "folder").mkdir()
    for path, kind in ((tmp_path / "folder", "folder"), (Path(os.devnull), "character device")):
        for read in (read_regular, load_tensors_only):
            with pytest.raises(NotARegularFile) as info:
                read(path)
            assert str(info.value) == f"a {kind}, not a regular file" and info.value.filename == str(path)
    with pytest.raises(NotARegularFile, match="a character device"):
        append_line(os.devnull, "{}")  # written to nothing before
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "missing")
    (tmp_path / "f").write_bytes(b"x\n")
    assert read_regular(tmp_path / "f") == b"x\n"


def test_a_mapped_tensor_file_is_the_one_checked_not_one_swapped_in_after(tmp_path, monkeypatch):
    """torch maps a file by a name: load_tensors_only(mmap=True) hands it one naming the open file it
    checked to be regular, so a file (or a FIFO that would block) put in the path's place after the check
    is not the one read. The swap happens inside open_regular, right after its check."""
    from glann_ext import _io as io

    torch.save({"rows": torch.arange(5.0)}, tmp_path / "shard.pt")
    torch.save({"rows": -torch.arange(5.0)}, tmp_path / "other.pt")
    swap_in_after_the_check(monkeypatch, io, tmp_path / "other.pt")
    rows = load_tensors_only(tmp_path / "shard.pt", mmap=True)["rows"]
    assert torch.equal(rows, torch.arange(5.0))
    assert torch.equal(torch.load(tmp_path / "shard.pt")["rows"], -torch.arange(5.0))  # the swap happened


def test_the_vgg_weights_digest_is_of_the_bytes_the_loss_loaded(tmp_path, monkeypatch):
    """A run records the SHA-256 of the perceptual loss's weights file and checks it on resume. The digest
    and the load read one open file: with two opens (before 0.3.12), a file put in the path's place between
    them had the checkpoint record one file's digest while the loss trained with another file's weights."""
    import hashlib

    from glann_testing import vgg_state

    from glann_ext import _io as io
    from glann_ext.models.perceptual import VGGPerceptualLoss

    torch.save(vgg_state(0), tmp_path / "vgg.pt")
    torch.save(vgg_state(1), tmp_path / "other.pt")
    want = hashlib.sha256((tmp_path / "vgg.pt").read_bytes()).hexdigest()
    swap_in_after_the_check(monkeypatch, io, tmp_path / "other.pt")
    loss = VGGPerceptualLoss(tmp_path / "vgg.pt")
    assert loss.weights_sha256 == want
    assert torch.equal(loss.features[0].weight, vgg_state(0)["features.0.weight"])
    assert hashlib.sha256((tmp_path / "vgg.pt").read_bytes()).hexdigest() != want  # the swap happened


def test_a_vgg_weights_file_written_while_it_is_read_is_refused(tmp_path, monkeypatch):
    """One open file does not keep out a write in place (``torch.save`` over the file truncates and rewrites
    it): hashed before such a write and loaded after, the digest would describe other weights than the
    loss's. The file's size and times are compared after the load, and the loss says what happened."""
    from glann_testing import vgg_state

    from glann_ext import _io as io
    from glann_ext.errors import ConfigError
    from glann_ext.models.perceptual import VGGPerceptualLoss

    path = tmp_path / "vgg.pt"
    torch.save(vgg_state(0), path)
    hashed = io._digest_of_open

    def rewritten_after_hashing(f, algorithm):
        digest = hashed(f, algorithm)
        torch.save(vgg_state(1), path)  # the same file, rewritten
        return digest

    monkeypatch.setattr(io, "_digest_of_open", rewritten_after_hashing)
    with pytest.raises(ConfigError, match=r"vgg\.pt: the VGG16 weights file changed while it was read"):
        VGGPerceptualLoss(path)


def test_atomic_write_names_the_file_asked_for_when_its_folder_cannot_take_it(tmp_path, monkeypatch):
    """A file where a folder should be is named as such (it was a mkdir's "File exists"), and a temp file
    that cannot be made (a read-only or virtual folder: /proc) is reported as the target, not as its
    random temp name."""
    (tmp_path / "a.npy").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match=r"a\.npy is not a folder") as err:
        atomic_write(tmp_path / "a.npy" / "b" / "x.png", lambda f: f.write(b"x"))
    assert err.value.filename == str(tmp_path / "a.npy" / "b" / "x.png")

    def no_temp(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "x.png.abc123.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", no_temp)
    with pytest.raises(FileNotFoundError) as err:
        atomic_write(tmp_path / "x.png", lambda f: f.write(b"x"))
    assert err.value.filename == str(tmp_path / "x.png")


def test_atomic_write_writes_beside_the_target_syncs_renames_and_syncs_the_folder(tmp_path, monkeypatch):
    """atomic_write's steps, in order: the bytes go to a temp file of atomic_write's naming in the target's
    own folder (a rename within one file system is atomic) while the target still holds the old bytes; that
    file is fsynced, renamed onto the target, and the folder fsynced (the rename survives a power cut). The
    file gets a new file's permissions under the umask, not mkstemp's 0600."""
    path = tmp_path / "f.json"
    path.write_bytes(b"old")
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(("replace", Path(src).parent == Path(dst).parent))
        real_replace(src, dst)

    def write(f) -> None:
        f.write(b"new")
        temps = [p.name for p in tmp_path.iterdir() if p != path]
        assert len(temps) == 1 and TEMP_NAME.fullmatch(temps[0]) and temps[0].startswith("f.json."), temps
        assert path.read_bytes() == b"old"
        events.append(("write",))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    umask = os.umask(0o027)
    try:
        atomic_write(path, write)
    finally:
        os.umask(umask)
    assert events == [("write",), ("fsync", "file"), ("replace", True), ("fsync", "folder")]
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
    ids=["disk_full", "ctrl_c"],
)
def test_a_failed_torch_save_says_what_failed_and_keeps_the_old_file(tmp_path, failure):
    """torch.save's archive writer turns an exception raised by the file's write (a full disk, a Ctrl-C)
    into its own RuntimeError ("unexpected pos"), so a full disk or a Ctrl-C during a checkpoint gave that
    traceback (exit 1, no resume hint). atomic_write raises what failed: the OSError, named by the target
    (not the temp file), or the KeyboardInterrupt; the old file stays, no temp file is left."""
    path = tmp_path / "main.pt"
    path.write_bytes(b"old")

    class Failing(io.RawIOBase):
        def __init__(self, f) -> None:
            self.f, self.left = f, 1000

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            self.left -= len(b)
            if self.left < 0:
                raise failure
            return self.f.write(b)

    with pytest.raises(type(failure)) as info:
        atomic_write(path, lambda f: torch.save({"a": torch.randn(10000)}, Failing(f)))
    if isinstance(failure, OSError):
        assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(path))
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["main.pt"]


def test_stale_temps_go_from_every_folder_a_run_writes_and_only_by_their_whole_name(tmp_path):
    """remove_stale_temps takes atomic_write's leftovers from the run folder, checkpoints/, each step folder
    and images/; a name that merely starts like one (a user's backup of it) stays."""
    run = tmp_path / "run"
    step = run / "checkpoints" / "step-00000003"
    step.mkdir(parents=True)
    (run / "images").mkdir()
    ours = [
        run / "config.json.abcd1234.tmp", run / "checkpoints" / "manifest.json.k3j4h5g6.tmp",
        step / "main.pt.a1b2_3d4.tmp", run / "images" / "samples.png.zz99yy88.tmp",
    ]  # fmt: skip
    keep = [run / "config.json.abcd1234.tmp.bak", step / "main.pt.abcd123.tmp", step / "main.pt"]
    for p in ours + keep:
        p.write_text("x")
    assert sorted(remove_stale_temps(run)) == sorted(ours)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in ours)
    # checkpoints/ a link to a folder of the user's: its step-* folders lie outside the run, untouched
    outside = tmp_path / "store" / "step-2024-backup"
    outside.mkdir(parents=True)
    theirs = outside / "report.abcd1234.tmp"
    theirs.write_text("x")
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(tmp_path / "store")
    assert remove_stale_temps(run) == [] and theirs.exists()


def test_a_lock_records_its_pid_alone_and_removes_only_a_folder_it_created(tmp_path):
    """The lock file holds its holder's pid and nothing of a longer one an earlier holder left (a second
    writer's error quotes it); release removes the folder only if acquire created it (a command that failed
    before writing leaves no trace), never a folder the user made (an empty --out stays)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / ".lock").write_text("123456789012345\n")
    with FolderLock(mine):
        assert (mine / ".lock").read_text() == f"{os.getpid()}\n"
    assert mine.is_dir()
    (mine / ".lock").unlink()
    with FolderLock(mine):
        pass
    assert mine.is_dir()
    with FolderLock(tmp_path / "new"):
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()
    lock = FolderLock(tmp_path / "raced").acquire()  # another process writes in between unlink and rmdir
    real_unlink = Path.unlink

    def unlink_then_a_writer_comes(self, *args, **kwargs):
        real_unlink(self, *args, **kwargs)
        (tmp_path / "raced" / ".lock").write_text("2\n")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "unlink", unlink_then_a_writer_comes)
        lock.release()  # the folder is the other process's now: kept, and no OSError from the clean-up
    assert lock.fd is None and (tmp_path / "raced" / ".lock").exists()


# each file of a run folder that a command reads or appends to, replaced by a FIFO, and the command run
_FIFO_CHILD = """
import os, shutil, sys
from pathlib import Path
from glann_ext.cli import main
from glann_ext.train import checkpoint as ckpt
finished, tmp = Path(sys.argv[1]), Path(sys.argv[2])
step = ckpt.checkpoint_dir(finished) / ckpt.read_manifest(finished)["step_dir"]
saved = [str(p.relative_to(finished)) for p in (step / "main.pt", *step.glob("shard-*"))]
cases = [(rel, "train") for rel in ("config.json", "metrics.jsonl", ".lock", "resumes.jsonl",
         "checkpoints/manifest.json", *saved)]
cases += [(rel, "sample") for rel in ("checkpoints/manifest.json", *saved)]
cases += [(saved[0], "reshard"), ("checkpoints/manifest.json", "reshard"), ("config.json", "eval")]
for i, (rel, cmd) in enumerate(cases):
    run = tmp / f"run{i}"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns(".lock"))
    if cmd == "sample":
        (run / "model.safetensors").unlink()  # so that sample reads the checkpoint
    (run / rel).unlink(missing_ok=True)
    os.mkfifo(run / rel)
    argv = {"train": ["train", "--out", str(run), "--no-progress", "--imle-epochs", "2"],  # a resume's change
            "sample": ["sample", "--run", str(run), "-n", "2", "--grid", str(tmp / "s.png")],
            "reshard": ["reshard", "--run", str(run), "--world-size", "2"],
            "eval": ["eval", "--run", str(run), "--no-progress"]}[cmd]
    print("case", rel, cmd, main(argv), flush=True)
"""


def test_a_fifo_in_place_of_a_run_folder_file_is_a_one_line_error_not_a_hang(finished, tmp_path):
    # in a child process, so that a regression fails after a timeout instead of hanging the session
    try:
        child = subprocess.run([sys.executable, "-c", _FIFO_CHILD, str(finished), str(tmp_path)], check=False,
                               capture_output=True, text=True, timeout=240, **child_kwargs(tmp_path))  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"a command blocked on a FIFO after: {exc.stdout!r}")
    done = [line for line in child.stdout.splitlines() if line.startswith("case ")]  # the rest: resume logs
    errors = child.stderr.splitlines()
    assert child.returncode == 0 and len(done) == 13 and len(errors) == 13, (child.stdout, child.stderr)
    for line, err in zip(done, errors):
        rel, cmd, code = line.split()[1:]
        assert code == "2" and err.startswith(f"glann {cmd}: error: "), (line, err)
        assert f"{Path(rel).name}: " in err and "a FIFO, not a regular file" in err, (line, err)


# -- 6. a failed start leaves the folder as it was -------------------------------------------------------
def test_failed_starts_leave_no_folder_and_do_not_bind_the_next_command(tmp_path, blob_file, capsys):
    out = tmp_path / "run"
    for bad in (["--lr-z", "inf"], ["--imle-lr", "nan"], ["--seed", str(2**63)], ["--device", "cpu:3"],
                ["--device", "meta"], ["--device", "cuda"]):  # fmt: skip
        _one_line_error(capsys, "train", "--dataset", blob_file, "--out", str(out), *TINY, *bad)
        assert not out.exists(), bad
    assert "needs a finished GLO stage" in _one_line_error(
        capsys, "train", "--dataset", blob_file, "--out", str(out), *TINY, "--stage", "imle"
    )
    assert not out.exists()
    cfg = tiny_config(dataset=blob_file, ckpt_every=0)
    with pytest.raises(Interrupt):  # dies in its first epoch, before any checkpoint
        train(cfg, out, progress=False, on_step=interrupt_at("glo", 1), log=lambda s: None)
    assert (out / "config.json").exists() and ckpt.read_manifest(out) is None
    assert main(["train", "--dataset", blob_file, "--out", str(out), *TINY, "--latent-dim", "8"]) == 0
    assert json.loads((out / "config.json").read_text())["latent_dim"] == 8


def test_out_may_hold_what_a_killed_start_left_but_nothing_of_the_users(tmp_path, blob_file, capsys):
    """--out holding only a killed start's leftovers (an atomic_write temp file, the lock file) is trained
    into, and the temp file cleared; a name of the user's that merely looks like one is refused."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json.abcd1234.tmp").write_text("{")
    (out / ".lock").write_text("1\n")
    assert main(["train", "--dataset", blob_file, "--out", str(out), *TINY]) == 0
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.tmp"))
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.abcd1234.tmp.txt").write_text("mine")
    err = _one_line_error(capsys, "train", "--dataset", blob_file, "--out", str(user), *TINY)
    assert "not a glann run folder and not empty (it holds 'notes.abcd1234.tmp.txt')" in err


def test_out_holding_folders_of_the_users_named_like_a_runs_is_refused(tmp_path, blob_file, capsys):
    """A folder holding only `images/` and `checkpoints/` counted as a killed start's, whatever they held: the
    run replaced the user's grid-named file, removed their `checkpoints/step-0-old/` and temp-named draft, and
    with the images themselves in OUT/images wrote its grids among them (the run then could not resume)."""
    from PIL import Image

    user = tmp_path / "project"
    (user / "images").mkdir(parents=True)
    (user / "checkpoints" / "step-0-old").mkdir(parents=True)
    (user / "checkpoints" / "step-0-old" / "notes.txt").write_text("mine")
    (user / "images" / "samples_imle_001.png").write_text("mine")
    err = _one_line_error(capsys, "train", "--dataset", blob_file, "--out", str(user), *TINY)
    assert "not a glann run folder and not empty (it holds 'checkpoints' and 1 more)" in err
    shutil.rmtree(user / "checkpoints")
    (user / "images" / "samples_imle_001.png").unlink()
    for i, im in enumerate(blob_images(8, 28)):
        Image.fromarray(im).save(user / "images" / f"{i}.png")
    err = _one_line_error(capsys, "train", "--dataset", str(user / "images"), "--out", str(user), *TINY)
    assert "it holds 'images'" in err and len(list((user / "images").iterdir())) == 8
    leftovers = tmp_path / "killed"  # what a start killed before its config.json leaves is still taken
    (leftovers / "checkpoints" / "step-00000000").mkdir(parents=True)
    (leftovers / "checkpoints" / "step-00000000" / "main.pt").write_bytes(b"")
    (leftovers / "images").mkdir()
    save_grid(torch.zeros(1, 1, 4, 4), leftovers / "images" / "samples_gaussian_001.png")
    assert main(["train", "--dataset", blob_file, "--out", str(leftovers), *TINY]) == 0


def test_only_the_step_folders_a_run_writes_are_removed(tmp_path):
    """The step folders before the newest went by `step-*` and string order: a `step-0-old` of the user's,
    or one reached through a link, went too."""
    run = tmp_path / "run"
    names = ["step-00000001", "step-00000002", "step-0-old", "step-00000000x"]
    for name in names:
        (ckpt.checkpoint_dir(run) / name).mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (ckpt.checkpoint_dir(run) / "step-00000000").symlink_to(elsewhere)
    ckpt._delete_older(run, "step-00000002")
    left = sorted(p.name for p in ckpt.checkpoint_dir(run).iterdir())
    assert (
        left == sorted(["step-00000000", "step-00000002", "step-0-old", "step-00000000x"])
        and elsewhere.is_dir()
    )


# -- 7. one-line errors ------------------------------------------------------------------------------------
def test_a_table_of_bad_invocations_gives_one_line_each(finished, tmp_path, blob_file, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    bad_config = tmp_path / "bad.json"
    bad_config.write_text(json.dumps({"latent_dim": "64"}))
    null_config = tmp_path / "null.json"
    null_config.write_text(json.dumps({"batch_size": None}))
    run = str(finished)
    cases = {
        "--out under a file": ["train", "--dataset", blob_file, "--out", str(a_file / "run"), *TINY],
        "--out in /proc": ["train", "--dataset", blob_file, "--out", "/proc/glann-run", *TINY],
        "wrong-typed config": ["train", "--config", str(bad_config), "--out", str(tmp_path / "c")],
        "null in config": ["train", "--config", str(null_config), "--out", str(tmp_path / "c")],
        "--grid under a file": ["sample", "--run", run, "--grid", str(a_file / "s.png")],
        "--grid unknown extension": ["sample", "--run", run, "--grid", str(tmp_path / "s.xyz")],
        "--npy under a file": ["sample", "--run", run, "--npy", str(a_file / "s.npy")],
        "invert --limit -1": ["invert", "--run", run, "--images", blob_file, "--limit", "-1"],
        "invert --steps -1": ["invert", "--run", run, "--images", blob_file, "--steps", "-1"],
        "invert --restarts -2": ["invert", "--run", run, "--images", blob_file, "--restarts", "-2"],
        "sample -n 0": ["sample", "--run", run, "-n", "0"],
        "interpolate --steps 1": ["interpolate", "--run", run, "--steps", "1"],
        "reshard --world-size 1000": ["reshard", "--run", run, "--world-size", "1000"],
        "unknown option": ["sample", "--run", run, "--colour", "red"],
    }
    for argv in cases.values():
        _one_line_error(capsys, *argv)
    assert not (tmp_path / "c").exists()


def test_a_forged_main_pt_a_non_utf8_config_and_a_missing_device_are_one_line_errors(
    finished, tmp_path, capsys
):
    run = _copy(finished, tmp_path)
    (run / "model.safetensors").unlink()  # sample reads the checkpoint
    main_pt = ckpt.checkpoint_dir(run) / ckpt.read_manifest(run)["step_dir"] / "main.pt"
    good = torch.load(main_pt, weights_only=True)
    cases = {
        "expected a dict, got list": [1, 2, 3],
        "no phase, glo, imle, config, image_shape": {},
        "no config": {k: v for k, v in good.items() if k != "config"},
        "config must be a dict, got str": {**good, "config": "x"},
        "imle.epoch must be an integer >= 0, got -5": {**good, "imle": {**good["imle"], "epoch": -5}},
        "phase must be 'glo' or 'imle'": {**good, "phase": "done"},
        "image_shape must be 3 positive integers": {**good, "image_shape": [1, 28]},
        "image_shape must be 3 positive integers, got [1, 0, 28]": {**good, "image_shape": [1, 0, 28]},
    }
    for needle, forged in cases.items():
        torch.save(forged, main_pt)
        for argv in (["sample", "--run", str(run)], ["train", "--out", str(run), "--no-progress"]):
            err = _one_line_error(capsys, *argv)
            assert "not a checkpoint of glann_ext" in err and needle in err, (argv, err)
    main_pt.write_bytes(b"")
    assert "empty (a damaged checkpoint file)" in _one_line_error(capsys, "sample", "--run", str(run))
    main_pt.write_bytes(b"PK\x03\x04 truncated")
    assert "cannot load checkpoint" in _one_line_error(capsys, "sample", "--run", str(run))
    torch.save(good, main_pt)
    shard_pt = main_pt.parent / ckpt.read_manifest(run)["shards"][0]
    good_shard = torch.load(shard_pt, weights_only=True)
    for key, t in good_shard["rows"].items():  # each per-row tensor in turn, as float64 or one row short
        for forged_rows in (t.double() if t.is_floating_point() else t.float(), t[1:]):
            torch.save({**good_shard, "rows": {**good_shard["rows"], key: forged_rows}}, shard_pt)
            for argv in (["sample", "--run", str(run)], ["train", "--out", str(run), "--no-progress"]):
                err = _one_line_error(capsys, *argv)
                assert f"rows {key!r} are" in err and "expected float32" in err, (argv, err)
    torch.save(good_shard, shard_pt)
    bad = tmp_path / "cfg.json"
    bad.write_bytes(b"\xff\xfe")
    assert "not UTF-8" in _one_line_error(
        capsys, "train", "--config", str(bad), "--out", str(tmp_path / "new")
    )
    shutil.copy(bad, run / "config.json")
    assert "not UTF-8" in _one_line_error(capsys, "train", "--out", str(run), "--no-progress")
    if not torch.cuda.is_available():
        for cmd in ("sample", "eval"):
            assert "--device 'cuda': " in _one_line_error(capsys, cmd, "--run", str(run), "--device", "cuda")


def test_a_checkpoint_of_another_shape_is_a_one_line_error(finished, tmp_path, blob_file, capsys):
    other = tmp_path / "other"
    train(tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=1, gen_width=4), other, progress=False,
          log=lambda s: None)  # fmt: skip
    run = _copy(finished, tmp_path)
    (run / "model.safetensors").unlink()
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(other / "checkpoints", run / "checkpoints")
    assert "trained with another config (gen_width 4 -> " in _one_line_error(  # its own copy of the config
        capsys, "train", "--out", str(run), "--imle-epochs", "2", "--no-progress"
    )
    shutil.copy(other / "model.safetensors", run / "model.safetensors")
    tensors, meta = read_model_file(run / "model.safetensors")
    from safetensors.torch import save_file

    save_file({k: v for k, v in tensors.items() if not k.startswith("T.")}, str(run / "model.safetensors"),
              metadata={"glann_ext": json.dumps(meta)})  # fmt: skip
    assert "does not describe a usable model" in _one_line_error(capsys, "sample", "--run", str(run))


def test_a_forged_model_description_cannot_make_us_build_a_larger_network(finished, tmp_path, capsys):
    """A model file's JSON description names G's and T's sizes; a forged one asking for a network the file's
    tensors do not hold is refused before anything of that size is allocated (a width of 10^6 would be
    terabytes), and codes of another width than G's input are refused too."""
    from safetensors.torch import save_file

    tensors, meta = read_model_file(finished / "model.safetensors")
    path = tmp_path / "model.safetensors"
    cases = {
        "the generator would have": ({}, {"generator": {**meta["generator"], "width": 10**6}}),  # before building
        "G.body.0.weight: the description asks for": ({}, {"generator": {**meta["generator"], "width": 64}}),
        "T.net.0.weight: the description asks for": ({}, {"mapping": {**meta["mapping"], "hidden": 10**7}}),
        "codes must be floating": ({"codes": tensors["codes"][:, :-1].contiguous()}, {}),
    }  # fmt: skip
    for needle, (changed, described) in cases.items():
        save_file(
            {**tensors, **changed}, str(path), metadata={"glann_ext": json.dumps({**meta, **described})}
        )
        with pytest.raises(CheckpointError, match="does not describe a usable model") as err:
            load_model_file(path)
        assert needle in str(err.value), str(err.value)
        assert needle in _one_line_error(capsys, "sample", "--run", str(path))
    # a run folder without its model file: the networks are built to the checkpoint's tensors instead
    run = _copy(finished, tmp_path)
    (run / "model.safetensors").unlink()
    main_pt = ckpt.checkpoint_dir(run) / ckpt.read_manifest(run)["step_dir"] / "main.pt"
    main = ckpt.load(main_pt)
    for field, needle in (("gen_width", "G.body.0.weight"), ("mapping_hidden", "T.net.0.weight")):
        ckpt.save_atomic({**main, "config": {**main["config"], field: MAXIMA[field]}}, main_pt)
        err = _one_line_error(capsys, "sample", "--run", str(run))
        assert "the checkpoint does not describe a usable model" in err and needle in err, err
        ckpt.save_atomic({**main, "config": {**main["config"], field: 10**6}}, main_pt)  # beyond any run
        err = _one_line_error(capsys, "sample", "--run", str(run))
        assert f"{run}: the checkpoint's config is not valid" in err and f"{field} must be at most" in err, (
            err
        )


def test_a_forged_optimizer_state_is_refused_before_the_fused_step_reads_it(finished, tmp_path, capsys):
    """torch's fused Adam trusts its moments' shapes: a checkpoint whose optimizer state held an exp_avg of 2
    values for a (256, 4) weight crashed the resumed run with heap corruption (weights_only loading cannot
    see it: the file holds only tensors). Every moment is now checked against its parameter first."""
    run = _copy(finished, tmp_path)
    main_pt = ckpt.checkpoint_dir(run) / ckpt.read_manifest(run)["step_dir"] / "main.pt"
    saved = ckpt.load(main_pt)
    resume = ("train", "--out", str(run), "--imle-epochs", "2", "--no-progress")
    forged = {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(2)}
    imle = {**saved["imle"], "opt": {**saved["imle"]["opt"], "state": {0: forged}}}
    ckpt.save_atomic({**saved, "imle": imle}, main_pt)
    err = _one_line_error(capsys, *resume)
    shape = tuple(next(load_model(finished).T.parameters()).shape)
    assert "the checkpoint does not fit this run's model (opt: exp_avg of parameter 0 is" in err, err
    assert f"(torch.float32, (2,)), expected (torch.float32, {shape}))" in err, err
    state = saved["glo"]["opt_g"]["state"]
    doubled = {**state, 1: {**state[1], "exp_avg_sq": state[1]["exp_avg_sq"].double()}}
    glo = {**saved["glo"], "opt_g": {**saved["glo"]["opt_g"], "state": doubled}}
    ckpt.save_atomic({**saved, "glo": glo}, main_pt)
    assert "opt_g: exp_avg_sq of parameter 1 is (torch.float64" in _one_line_error(capsys, *resume)
    for groups in ("x", [{"params": [0]}]):  # no list of groups; one parameter where T has several
        imle = {**saved["imle"], "opt": {**saved["imle"]["opt"], "param_groups": groups}}
        ckpt.save_atomic({**saved, "imle": imle}, main_pt)
        assert "the checkpoint does not fit this run's model (opt: " in _one_line_error(capsys, *resume)
    ckpt.save_atomic(saved, main_pt)  # as it was: the resume trains
    assert main(list(resume)) == 0


def test_stored_codes_off_the_unit_sphere_are_refused_naming_the_row(finished, tmp_path, capsys):
    """Training leaves every code on the unit sphere, and balanced sampling, the spread and latent
    interpolation measure T's projected samples against them: a model file or checkpoint whose codes lie
    elsewhere (forged or damaged) is refused with the first such row and its norm, not sampled wrongly."""
    from safetensors.torch import save_file

    tensors, meta = read_model_file(finished / "model.safetensors")
    path = tmp_path / "model.safetensors"
    for row, scale in ((0, 2.0), (3, 1 + 2e-4), (5, 0.0)):
        codes = tensors["codes"].clone()
        codes[row] *= scale
        save_file({**tensors, "codes": codes}, str(path), metadata={"glann_ext": json.dumps(meta)})
        want = (
            f"codes must lie on the unit sphere (norms within 0.0001 of 1), got norm {scale:.6g} at row {row}"
        )
        assert want in _one_line_error(capsys, "sample", "--run", str(path))
    codes = tensors["codes"].clone()
    codes[2] *= 1 + 5e-5  # within the tolerance: float32 rounding and more
    save_file({**tensors, "codes": codes}, str(path), metadata={"glann_ext": json.dumps(meta)})
    assert torch.equal(load_model_file(path).codes, codes)
    run = _copy(finished, tmp_path)  # without its model file: the model comes from the checkpoint
    (run / "model.safetensors").unlink()
    shard_pt = next((ckpt.checkpoint_dir(run) / ckpt.read_manifest(run)["step_dir"]).glob("shard-*"))
    shard = ckpt.load(shard_pt)
    shard["rows"]["glo.codes"][1] *= 3
    ckpt.save_atomic(shard, shard_pt)
    err = _one_line_error(capsys, "sample", "--run", str(run))
    assert "the checkpoint does not describe a usable model" in err and "got norm 3 at row 1" in err, err


def test_json_with_an_integer_past_pythons_digit_limit_is_a_one_line_error(finished, tmp_path, capsys):
    """Python's json raises a plain ValueError, not a JSONDecodeError, for an integer of more than 4,300
    digits: from a model description, a run's config.json or manifest, or --config, it was a traceback."""
    from safetensors.torch import save_file

    big = "1" * 5000
    tensors, meta = read_model_file(finished / "model.safetensors")
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"glann_ext": json.dumps(meta)[:-1] + f', "x": {big}}}'})
    assert "corrupt model description (ValueError" in _one_line_error(capsys, "sample", "--run", str(path))
    config = tmp_path / "c.json"
    config.write_text(f'{{"seed": {big}}}')
    new = ("train", "--config", str(config), "--out", str(tmp_path / "new"))
    assert f"{config}: not valid JSON" in _one_line_error(capsys, *new)
    for name in ("config.json", "checkpoints/manifest.json"):
        run = _copy(finished, tmp_path, name.replace("/", "-"))
        (run / name).write_text(f'{{"seed": {big}}}')
        err = _one_line_error(capsys, "train", "--out", str(run), "--imle-epochs", "2", "--no-progress")
        assert str(run / name) in err and ("not valid JSON" in err or "unreadable manifest" in err), err


def test_files_far_larger_than_what_they_can_hold_are_refused_before_they_are_read(
    finished, tmp_path, capsys
):
    """A model file is read whole only once its header describes exactly its bytes (a sparse 12 GB file of
    zeros was read whole before safetensors looked at its first 8 bytes), and a config file is read up to
    1 MiB (``--config /dev/zero`` was read until memory ran out)."""
    sparse = tmp_path / "zeros.safetensors"
    with open(sparse, "wb") as f:
        f.truncate(1 << 40)  # a terabyte of holes: reading it whole cannot succeed
    err = _one_line_error(capsys, "sample", "--run", str(sparse))
    assert "not a readable model file (a header of 0 bytes in 1,099,511,627,776)" in err, err
    padded = tmp_path / "padded.safetensors"
    padded.write_bytes((finished / "model.safetensors").read_bytes())
    with open(padded, "r+b") as f:
        f.truncate(1 << 40)
    err = _one_line_error(capsys, "sample", "--run", str(padded))
    assert "its header does not describe its 1,099,511,627,776 bytes" in err, err
    err = _one_line_error(capsys, "train", "--config", "/dev/zero", "--out", str(tmp_path / "new"))
    assert "/dev/zero: more than 1,048,576 bytes, too large to be a config" in err, err
    for name, command in (
        ("checkpoints/manifest.json", ("train", "--no-progress", "--imle-epochs", "2", "--out")),
        ("metrics.jsonl", ("train", "--no-progress", "--imle-epochs", "2", "--out")),  # pruned on resume
    ):
        run = _copy(finished, tmp_path, name.replace("/", "-"))
        with open(run / name, "r+b") as f:
            f.truncate(1 << 40)
        err = _one_line_error(capsys, *command, str(run))
        assert name.split("/")[-1] in err and "too large to be read" in err, err


def test_the_unit_sphere_check_names_the_row_past_its_first_block():
    """The check runs over blocks of rows (a float64 copy of a whole table was twice its size): a row past
    the first block is named by its own index."""
    from glann_ext.models.generative import check_unit_codes

    codes = torch.nn.functional.normalize(
        torch.randn(70_000, 4, generator=torch.Generator().manual_seed(0)), dim=1
    )
    check_unit_codes(codes)
    codes[69_999] *= 1.5
    with pytest.raises(ValueError, match=r"got norm 1.5 at row 69999"):
        check_unit_codes(codes)


def test_a_reader_never_mixes_two_steps(finished, tmp_path, monkeypatch):
    """A step replaced while a reader reads it (its files vanish): the reader starts over on the new step."""
    run = _copy(finished, tmp_path)
    seq = ckpt.read_manifest(run)["seq"]
    real_load, calls = ckpt.load, []

    def load_while_a_writer_moves_on(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:  # a writer replaces the step between the reader's manifest and its files
            ckpt.reshard(run, 2, log=lambda s: None)
            raise CheckpointError(f"{path}: cannot load checkpoint (no such file)")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(ckpt, "load", load_while_a_writer_moves_on)
    manifest, main_state, rows = ckpt.read_step(run)
    assert manifest["seq"] == seq + 1 and manifest["world_size"] == 2
    assert rows["glo.codes"].shape[0] == manifest["total"] and main_state["phase"] == "imle"


def test_a_checkpoint_that_is_no_torch_file_is_called_damaged_not_dangerous(tmp_path):
    """A text file or a zip cut short in a checkpoint's place is "not a torch.save archive (damaged, ...)",
    as before the first-bytes check; it was briefly said to hold objects that can run code."""
    for content in (b"hello", b"PK\x03", b"\x00" * 10):
        path = tmp_path / "main.pt"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=r"not a torch\.save archive \(damaged") as err:
            ckpt.load(path)
        assert "holds objects" not in str(err.value)


def test_atomic_write_takes_the_longest_file_name_the_file_system_does(tmp_path):
    """The temp file was named after the target plus a random part and a suffix: a legal 250-character name
    gave a temp name past the 255 a file system allows, and the write failed as if the name were too long."""
    for name in ("n" * 246 + ".png", "é" * 123 + ".png", "图" * 80 + ".png"):  # 250, 250 and 244 bytes
        folder = tmp_path / str(len(name))
        atomic_write(folder / name, lambda f: f.write(b"x"))
        assert (folder / name).read_bytes() == b"x" and [p.name for p in folder.iterdir()] == [name]


def test_a_temp_file_a_live_writer_holds_is_not_stale(tmp_path):
    """A run's resume removes the temp files killed writes left, but not one another process is writing
    (``glann eval`` writing eval.json into the run folder while its training resumes): atomic_write locks
    its temp file, and that lock dies with the writer, so a killed writer's temp file still goes."""
    run = tmp_path / "run"
    run.mkdir()
    left = run / "eval.json.abcd1234.tmp"  # a killed writer's: nobody holds it
    left.write_text("x")
    seen = {}

    def write(f):
        f.write(b"new")
        f.flush()
        seen["removed"] = remove_stale_temps(run)  # the other process's resume, in the middle of the write
        seen["temps"] = sorted(p.name for p in run.iterdir() if p.name.startswith("eval.json."))

    atomic_write(run / "eval.json", write)
    assert seen["removed"] == [left] and not left.exists()
    assert len(seen["temps"]) == 1 and seen["temps"][0] != left.name  # the live writer's temp stayed
    assert (run / "eval.json").read_bytes() == b"new"
    assert sorted(p.name for p in run.iterdir()) == ["eval.json"]


def test_a_temp_file_removed_before_its_writer_locked_it_is_made_again(tmp_path, monkeypatch):
    """Between mkstemp and its flock a temp file is unlocked; a resume that removes it then must not make
    the write fail (os.replace of a missing file): the writer sees its file gone and makes another."""
    import glann_ext._io as io_module

    made = []
    real_mkstemp = io_module.tempfile.mkstemp

    def mkstemp_then_removed(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        made.append(name)
        if len(made) == 1:
            assert remove_stale_temps(tmp_path) == [Path(name)]  # not locked yet: taken as stale
        return fd, name

    monkeypatch.setattr(io_module.tempfile, "mkstemp", mkstemp_then_removed)
    atomic_write(tmp_path / "config.json", lambda f: f.write(b"{}"))
    assert len(made) == 2 and (tmp_path / "config.json").read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_writes_go_on_and_stale_temps_go_where_the_file_system_has_no_flock(tmp_path, monkeypatch):
    """A file system without flock (ENOLCK): the temp file goes unmarked, the write succeeds, and a killed
    writer's temp file is removed by its name, as before the mark (it was kept for ever: a review)."""
    import glann_ext._io as io_module

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(io_module.fcntl, "flock", no_flock)
    atomic_write(tmp_path / "a.json", lambda f: f.write(b"{}"))
    assert (tmp_path / "a.json").read_bytes() == b"{}" and sorted(os.listdir(tmp_path)) == ["a.json"]
    (tmp_path / "a.json.abcd1234.tmp").write_text("x")
    assert remove_stale_temps(tmp_path) == [tmp_path / "a.json.abcd1234.tmp"]


def test_on_nfs_a_stale_temp_goes_and_a_live_one_stays(tmp_path, monkeypatch):
    """NFS emulates flock with an fcntl lock, exclusive only on a file open for writing (EBADF otherwise):
    the remover opened temp files read-only, so on NFS none was ever taken as stale (a review)."""
    import fcntl

    import glann_ext._io as io_module

    real_flock = fcntl.flock

    def nfs_flock(fd, op):
        if op & fcntl.LOCK_EX and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real_flock(fd, op)

    monkeypatch.setattr(io_module.fcntl, "flock", nfs_flock)
    stale = tmp_path / "main.pt.abcd1234.tmp"
    stale.write_text("x")
    seen = {}

    def write(f):
        f.write(b"new")
        seen["removed"] = remove_stale_temps(tmp_path)

    atomic_write(tmp_path / "eval.json", write)
    assert seen["removed"] == [stale] and sorted(os.listdir(tmp_path)) == ["eval.json"]


def test_the_temp_files_lock_lasts_until_it_is_replaced_onto_its_target(tmp_path, monkeypatch):
    """Closing the temp file dropped its lock before os.replace: a resume in that window still removed a
    live write's file (a review). The lock now lasts through the replace."""
    import glann_ext._io as io_module

    real_replace = os.replace
    seen = {}

    def replace_after_a_resume(src, dst):
        seen["removed"] = remove_stale_temps(tmp_path)  # the other process, between close and replace
        real_replace(src, dst)

    monkeypatch.setattr(io_module.os, "replace", replace_after_a_resume)
    atomic_write(tmp_path / "eval.json", lambda f: f.write(b"{}"))
    assert seen["removed"] == [] and sorted(os.listdir(tmp_path)) == ["eval.json"]


def test_a_file_system_that_refuses_chmod_still_takes_writes(tmp_path, monkeypatch):
    """A FAT or CIFS mount refuses chmod: the permissions stay the file system's and the write succeeds
    (the download's chmod failed with a bare PermissionError and left its partial file: a review)."""
    import glann_ext._io as io_module

    def refused(path, mode):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(path))

    monkeypatch.setattr(io_module.os, "chmod", refused)
    atomic_write(tmp_path / "a.json", lambda f: f.write(b"{}"))
    assert sorted(os.listdir(tmp_path)) == ["a.json"]


def test_a_reader_waits_out_a_job_that_checkpoints_every_step(finished, monkeypatch):
    """A reader whose step was replaced while it read retries on the new one; with --ckpt-every 1 about 0.5%
    of loads still gave up after 5 immediate tries (a review). It now tries READ_TRIES times, waiting a
    little longer each time (at most about a second in all), and then says to try again."""
    real_manifest, real_main = ckpt.read_manifest, ckpt.load_main
    seq, failures, sleeps = [0], [7], []

    def moving_manifest(run):  # every read finds a newer step
        seq[0] += 1
        return {**real_manifest(run), "seq": seq[0]}

    def vanishing_main(path):  # its files vanish while read, the first failures[0] times
        if failures[0]:
            failures[0] -= 1
            raise CheckpointError(f"{path}: gone")
        return real_main(path)

    monkeypatch.setattr(ckpt, "read_manifest", moving_manifest)
    monkeypatch.setattr(ckpt, "load_main", vanishing_main)
    monkeypatch.setattr(ckpt.time, "sleep", sleeps.append)
    _, main, _ = ckpt.read_step(finished)
    assert main["phase"] == "imle" and len(sleeps) == 7 and sleeps == sorted(sleeps) and sum(sleeps) < 1.5
    failures[0], sleeps[:] = 10**6, []
    with pytest.raises(CheckpointError, match="the checkpoint kept changing while it was read; try again"):
        ckpt.read_step(finished)
    assert len(sleeps) == ckpt.READ_TRIES - 1


# Found missing by a mutation test of the data loaders and the readers of user files (2026-12-07).


def _main_state(**imle):
    counters = {"epoch": 0, "step_in_epoch": 0, "global_step": 0}
    return {
        "phase": "imle",
        "glo": None,
        "imle": {**counters, **imle},
        "config": {},
        "image_shape": [1, 8, 8],
    }


# A tally's steps must be an integer >= 0 (test_trust forges only the loss's type and the keys)
@pytest.mark.parametrize("steps", [-1, 1.5, "3", True, None])
def test_main_pt_with_a_tally_whose_steps_are_not_a_count_is_refused(tmp_path, steps):
    path = tmp_path / "main.pt"
    ckpt.save_atomic(_main_state(tally={"loss": 0.5, "steps": 2, "seconds": 1.0}), path)
    assert ckpt.load_main(path)["imle"]["tally"]["steps"] == 2
    ckpt.save_atomic(_main_state(tally={"loss": 0.5, "steps": steps, "seconds": 1.0}), path)
    with pytest.raises(CheckpointError, match=r"main.pt: not a checkpoint of glann_ext \(imle.tally must be"):
        ckpt.load_main(path)


# A shard's start and stop must be integers >= 0, not negative numbers or booleans
@pytest.mark.parametrize(("start", "stop"), [(-2, 0), (True, 3), (0, False), (-5, -3)])
def test_a_shard_with_negative_or_boolean_bounds_is_refused(tmp_path, start, stop):
    path = tmp_path / "shard.pt"
    ckpt.save_atomic({"start": 0, "stop": 2, "rows": {"glo.codes": torch.zeros(2, 3)}}, path)
    assert ckpt.load_shard(path)["stop"] == 2
    n = int(stop) - int(start)
    ckpt.save_atomic({"start": start, "stop": stop, "rows": {"glo.codes": torch.zeros(max(n, 0), 3)}}, path)
    with pytest.raises(CheckpointError, match=r"shard.pt: not a checkpoint shard of glann_ext"):
        ckpt.load_shard(path)


# A file of exactly ``limit`` bytes is read; one byte more is refused (EFBIG) before it is read
def test_read_regular_reads_a_file_of_exactly_its_limit(tmp_path):
    p = tmp_path / "config.json"
    p.write_bytes(b"x" * 1024)
    assert read_regular(p, limit=1024) == b"x" * 1024
    assert read_regular(p) == b"x" * 1024
    with pytest.raises(OSError, match=r"more than 1,023 bytes, too large to be read") as info:
        read_regular(p, limit=1023)
    assert info.value.errno == errno.EFBIG and info.value.filename == str(p)


# A shard that holds fewer rows than its rank owns (its stop short of the bounds) is named as such at load,
# before its rows are joined into the trainer's state
def test_a_shard_whose_rows_stop_short_of_its_bounds_is_named(tmp_path, blob_file, capsys):
    run = tmp_path / "run"
    train(
        tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=1), run, progress=False, log=lambda s: None
    )
    step = ckpt.checkpoint_dir(run) / ckpt.read_manifest(run)["step_dir"]
    path = step / ckpt.shard_name(0, 1)
    shard = ckpt.load(path)
    assert (shard["start"], shard["stop"]) == (0, 96)
    shard["stop"] = 50
    shard["rows"] = {k: v[:50].clone() for k, v in shard["rows"].items()}
    ckpt.save_atomic(shard, path)
    code = main(["train", "--out", str(run), "--imle-epochs", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "shard 0 holds rows 0..50, expected (0, 96)" in err, err


# The record of the perceptual loss's weights file must be a string (a forged number or list would be compared
# with a digest later, or reach the next main.pt as it is)
@pytest.mark.parametrize("digest", [5, ["ab"], None, {"sha": "ab"}])
def test_main_pt_whose_vgg_digest_is_not_a_string_is_refused(tmp_path, digest):
    path = tmp_path / "main.pt"
    ckpt.save_atomic({**_main_state(), ckpt.VGG_DIGEST_KEY: "ab" * 32}, path)
    assert ckpt.load_main(path)[ckpt.VGG_DIGEST_KEY] == "ab" * 32
    ckpt.save_atomic({**_main_state(), ckpt.VGG_DIGEST_KEY: digest}, path)
    with pytest.raises(
        CheckpointError,
        match=rf"main.pt: not a checkpoint of glann_ext \({ckpt.VGG_DIGEST_KEY} must be a string, got {type(digest).__name__}\)",
    ):
        ckpt.load_main(path)


# Mutation tests (2026-12-07): each test below fails on a one-line bug that no earlier test caught.
def test_atomic_write_fsyncs_the_file_it_renames_and_the_targets_own_folder(tmp_path, monkeypatch):
    """The order test records only *that* a file and a folder were fsynced: fsyncing the grandparent folder
    (or another file) would pass it. The fsynced file is the one renamed onto the target (same inode), and the
    fsynced folder is the target's own, the one whose entry the rename changed."""
    target = tmp_path / "a" / "b" / "f.json"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"old")
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(target, lambda f: f.write(b"new"))
    monkeypatch.undo()
    file_id = (target.stat().st_dev, target.stat().st_ino)
    folder_id = (target.parent.stat().st_dev, target.parent.stat().st_ino)
    assert synced == [file_id, folder_id]


def test_a_link_planted_as_the_lock_file_is_replaced_not_followed(tmp_path):
    """FolderLock replaces a link at .lock (its O_NOFOLLOW open would otherwise fail with ELOOP, and a run
    could not start): the pid goes into a plain .lock, never into the link's target."""
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    run.mkdir()
    victim.write_text("keep me")
    (run / ".lock").symlink_to(victim)
    with FolderLock(run):
        assert not (run / ".lock").is_symlink()
        assert (run / ".lock").read_text() == f"{os.getpid()}\n"
    assert victim.read_text() == "keep me"


def test_append_line_never_writes_through_a_link_planted_after_its_check(tmp_path, monkeypatch):
    """append_line removes a link it finds, and opens with O_NOFOLLOW, so a link planted between the check and
    the open (simulated: the check sees none) is refused rather than appended through."""
    victim, path = tmp_path / "victim.txt", tmp_path / "metrics.jsonl"
    victim.write_text("keep me")
    path.symlink_to(victim)
    real = Path.is_symlink
    monkeypatch.setattr(Path, "is_symlink", lambda self: False if self == path else real(self))
    with pytest.raises(OSError, match="symbolic links"):  # ELOOP from O_NOFOLLOW
        append_line(path, "{}")
    monkeypatch.undo()
    assert victim.read_text() == "keep me"


def test_an_upgrade_whose_model_write_fails_keeps_the_old_model_file(finished, tmp_path, monkeypatch):
    """model.pt is renamed to model.pt.glann-0.1 only once model.safetensors is written: a failed write (a
    full disk) left the run with neither, and a second upgrade then found nothing to convert."""
    run = _copy(finished, tmp_path)
    _as_v01(run)

    def full_disk(model, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(up, "save_model", full_disk)
    with pytest.raises(OSError, match="No space left"):
        up.upgrade_run(run, trust_pickle=True, log=lambda s: None)
    monkeypatch.undo()
    assert (run / "model.pt").exists() and not (run / "model.pt.glann-0.1").exists()
    up.upgrade_run(run, trust_pickle=True, log=lambda s: None)
    assert (run / "model.safetensors").exists() and (run / "model.pt.glann-0.1").exists()
    load_model(run)


def test_an_upgrade_stopped_by_a_damaged_shard_leaves_a_format_1_manifest(finished, tmp_path, monkeypatch):
    """The manifest says format 2 only once every file it names is converted: one that said so before its
    shards were converted would name pickles as current files (refused on load), and upgrade, seeing format
    2, would not convert them any more."""
    run = _copy(finished, tmp_path)
    _as_v01(run)
    real = up._unpickle

    def damaged_shard(path):
        if path.name.startswith("shard-"):
            raise CheckpointError(f"{path}: cannot read it as a glann_ext 0.1 file (damaged)")
        return real(path)

    monkeypatch.setattr(up, "_unpickle", damaged_shard)
    with pytest.raises(CheckpointError, match="damaged"):
        up.upgrade_run(run, trust_pickle=True, log=lambda s: None)
    monkeypatch.undo()
    assert ckpt.read_manifest_object(run)["format"] == 1
    up.upgrade_run(run, trust_pickle=True, log=lambda s: None)  # run again once the shard is readable
    assert ckpt.read_manifest(run)["format"] == ckpt.FORMAT_VERSION
    assert ckpt.load_latest(run)["glo"]["codes"].dtype == torch.float32
