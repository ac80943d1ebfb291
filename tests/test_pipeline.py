"""The in-memory pipeline (fit, hooks, the one epoch loop), backends that can be swapped on resume, the one
latent-optimizer state format, no global RNG use, and the CLI's split of user errors from bugs."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from glann_testing import Interrupt, interrupt_at, tiny_config

from glann_ext import cli
from glann_ext._threads import intra_op_threads
from glann_ext.backend import get_ops
from glann_ext.errors import ConfigError, UsageError
from glann_ext.models import GLANN, MLP, PixelIMLE, read_model_file
from glann_ext.ops import reference
from glann_ext.optim import SphereSparseAdam, SphereSparseSGD
from glann_ext.train import Fit, Hook, TrainConfig, fit, fit_imle, loop, train
from glann_ext.train import checkpoint as ckpt


class Recorder(Hook):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def stage_started(self, trainer) -> None:
        self.events.append(("start", trainer.stage))

    def epoch_started(self, trainer) -> None:
        self.events.append(("epoch", trainer.stage, trainer.epoch))

    def step_completed(self, trainer, info) -> None:
        self.events.append(("step", info["stage"], info["step"]))

    def epoch_completed(self, trainer, row) -> None:
        self.events.append(("row", row["stage"], row["epoch"], row["steps"]))

    def stage_completed(self, trainer) -> None:
        self.events.append(("end", trainer.stage))


def test_fit_in_memory_runs_both_stages_and_fires_every_event(blobs):
    rec = Recorder()
    cfg = tiny_config(glo_epochs=2, imle_epochs=1)
    model = fit(blobs, cfg, hooks=[rec])
    assert isinstance(model, GLANN) and model.T is not None and not model.training
    assert model.codes.shape == (96, cfg.latent_dim) and model.sample(3).shape == (3, 1, 28, 28)
    steps = 3  # 96 images, batch 32
    expected = [("start", "glo")]
    for e in range(2):
        expected += [("epoch", "glo", e), *(("step", "glo", e * steps + i) for i in (1, 2, 3))]
        expected += [("row", "glo", e + 1, steps)]
    expected += [("end", "glo"), ("start", "imle"), ("epoch", "imle", 0)]
    expected += [("step", "imle", 1), ("step", "imle", 2), ("step", "imle", 3)]
    expected += [("row", "imle", 1, steps), ("end", "imle")]
    assert rec.events == expected
    glo_only = fit(blobs, cfg, stage="glo")
    assert glo_only.T is None and torch.equal(glo_only.codes, fit(blobs, cfg, stage="glo").codes)
    pixel = fit(blobs, tiny_config(imle_space="pixel", imle_epochs=1))
    assert isinstance(pixel, PixelIMLE) and pixel.sample(2).shape == (2, 1, 28, 28)


def test_the_model_keeps_t_out_until_the_imle_stage_has_stepped(blobs):
    # an untrained T would sample noise: between the stages the model samples through the Gaussian only
    f = Fit(blobs, tiny_config(glo_epochs=1, imle_epochs=1))
    f.run("glo")
    f.phase = "imle"
    f._imle_trainer()  # the stage built, no step taken yet
    assert f.model.T is None
    loop.run_epoch(f.imle)
    assert f.model.T is f.T


def test_a_glo_only_model_says_how_to_train_its_imle_stage_and_that_way_works(blobs):
    """The error of sampling a GLO-only model names the ways on: the run folder's command, Fit's second
    stage in Python (which then samples), and the Gaussian baseline (which samples already)."""
    f = Fit(blobs, tiny_config(glo_epochs=1, imle_epochs=1))
    glo_only = f.run("glo")
    with pytest.raises(UsageError, match="no IMLE mapping T yet") as err:
        glo_only.sample(4)
    for way in ("glann train --out RUN", "Fit(images, cfg).run('imle')", "sample_gaussian"):
        assert way in str(err.value), way
    assert glo_only.sample_gaussian(4).shape == (4, *blobs.shape[1:])
    assert f.run("imle").sample(4).shape == (4, *blobs.shape[1:])


def test_training_never_touches_the_global_rng(blobs):
    """Networks are built from the run seed inside a forked RNG: the caller's RNG state is unchanged, and
    what was drawn before does not change the weights."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = fit(blobs, tiny_config(glo_epochs=1, imle_epochs=1))
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(1000)  # a different global state
    b = fit(blobs, tiny_config(glo_epochs=1, imle_epochs=1))
    ta, tb = a.export()[0], b.export()[0]
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_the_run_folder_is_the_pipeline_plus_files(blobs, tmp_path):
    """train() on a folder computes exactly what fit() computes in memory."""
    np.save(tmp_path / "x.npy", (blobs[:, 0] * 255).round().to(torch.uint8).numpy())
    cfg = tiny_config(dataset=str(tmp_path / "x.npy"), glo_epochs=2, imle_epochs=2)
    in_folder = train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    images = torch.from_numpy(np.load(tmp_path / "x.npy")).float().div(255)[:, None]
    in_memory = fit(images, cfg)
    in_memory.calibrate_sampler()  # the folder's model file holds its balanced-sampling table
    ta, tb = in_folder.export()[0], in_memory.export()[0]
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_a_resumed_epoch_reports_all_of_its_steps(tmp_path, blob_file):
    """The epoch's tally travels with the checkpoint: the metrics row of an epoch interrupted and resumed
    reports the mean over all its steps, equal to the uninterrupted run's row."""
    cfg = tiny_config(dataset=blob_file, glo_epochs=2, imle_epochs=2, ckpt_every=1)
    train(cfg, tmp_path / "a", progress=False, log=lambda s: None)
    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "b", progress=False, on_step=interrupt_at("glo", 4), log=lambda s: None)
    train(None, tmp_path / "b", progress=False, log=lambda s: None)
    rows = [(tmp_path / r / "metrics.jsonl").read_text().splitlines() for r in "ab"]
    a, b = ([json.loads(x) for x in r] for r in rows)
    assert [(r["stage"], r["epoch"], r["steps"], r["loss"]) for r in a] == [
        (r["stage"], r["epoch"], r["steps"], r["loss"]) for r in b
    ]


def test_an_epochs_seconds_add_up_every_step_and_the_hooks_between_them(monkeypatch):
    clock = [0.0]  # a fake clock: each step takes 1 s, each step's hook 0.5 s
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock[0])

    class Steps(loop.StageTrainer):
        stage = "glo"

        def train_step(self, batch):
            clock[0] += 1.0
            return 0.0

    class SlowHook(Hook):
        def step_completed(self, trainer, info):
            clock[0] += 0.5

    trainer = Steps(TrainConfig(batch_size=4), None, 0, 12, None)  # 3 steps
    assert loop.run_epoch(trainer, [SlowHook()])["seconds"] == 4.5


@pytest.mark.parametrize(("first", "second"), [("fused", "reference"), ("reference", "fused")])
def test_resume_with_the_other_ops_backend(tmp_path, blob_file, first, second):
    """Interrupted mid-GLO with one backend and mid-IMLE with the other, the run finishes, with the weights
    of an uninterrupted run of the first backend up to float rounding: the two backends' latent steps agree
    to the last ulps and share one optimizer state format. Adam turns ulps into up to ~lr on parameters
    whose gradient is near zero, so each tensor's bound is measured: 4 x the difference between two
    uninterrupted runs that differ only in their thread count (at least 2e-4)."""
    cfg = tiny_config(dataset=blob_file, glo_epochs=3, imle_epochs=2, ckpt_every=1, ops=first)
    train(cfg, tmp_path / "straight", progress=False, log=lambda s: None)
    train(dataclasses.replace(cfg, threads=2), tmp_path / "threads", progress=False, log=lambda s: None)
    run = tmp_path / "switched"
    with pytest.raises(Interrupt):
        train(cfg, run, progress=False, on_step=interrupt_at("glo", 5), log=lambda s: None)
    swapped = dataclasses.replace(cfg, ops=second)
    with pytest.raises(Interrupt):
        train(swapped, run, progress=False, on_step=interrupt_at("imle", 2), log=lambda s: None)
    train(cfg, run, progress=False, log=lambda s: None)  # and back to the first
    assert ckpt.read_manifest(run)["phase"] == "imle"
    a, b, noise = (
        read_model_file(p / "model.safetensors")[0]
        for p in (tmp_path / "straight", run, tmp_path / "threads")
    )
    assert a.keys() == b.keys()
    for k in a:
        if not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k
            continue
        bound = max(2e-4, 4 * (noise[k] - a[k]).abs().max().item())
        assert (b[k] - a[k]).abs().max().item() <= bound, k


def test_latent_optimizers_share_one_state_format():
    """A fused optimizer's state loads into a reference one (and back) and both continue alike; the
    SparseAdam state that glann_ext 0.1's reference backend saved loads too."""
    g = torch.Generator().manual_seed(0)
    table = reference.project_to_sphere_reference(torch.randn(12, 5, generator=g, dtype=torch.float64))
    fused = SphereSparseAdam(table.clone(), lr=0.05, betas=(0.5, 0.999))
    for _ in range(3):
        idx = torch.randperm(12, generator=g)[:4]
        fused.step(idx, torch.randn(4, 5, generator=g, dtype=torch.float64))
    ref = SphereSparseAdam(fused.table.clone(), lr=1.0, backend="reference")
    ref.load_state_dict(copy.deepcopy(fused.state_dict()))
    assert ref.step_count == 3 and ref.lr == 0.05 and ref.betas == (0.5, 0.999)
    idx, grad = torch.tensor([1, 5, 7]), torch.randn(3, 5, generator=g, dtype=torch.float64)
    fused.step(idx, grad)
    ref.step(idx, grad)
    torch.testing.assert_close(ref.table, fused.table, rtol=0, atol=1e-12)
    torch.testing.assert_close(ref.exp_avg_sq, fused.exp_avg_sq, rtol=0, atol=0)
    assert set(fused.state_dict()) == set(ref.state_dict())

    # glann_ext 0.1's reference backend: torch.optim.SparseAdam over the table
    param = torch.nn.Parameter(table.clone())
    sparse = torch.optim.SparseAdam([param], lr=0.05, betas=(0.5, 0.999))
    param.grad = torch.sparse_coo_tensor(idx[None], grad, param.shape, check_invariants=True)
    sparse.step()
    old = SphereSparseAdam(table.clone(), lr=1.0)
    old.load_state_dict(sparse.state_dict())
    assert old.step_count == 1 and old.lr == 0.05
    torch.testing.assert_close(old.exp_avg, sparse.state[param]["exp_avg"], rtol=0, atol=0)
    sgd = SphereSparseSGD(table.clone(), lr=0.1)
    sgd.load_state_dict(torch.optim.SGD([param], lr=0.3).state_dict())
    assert sgd.lr == 0.3
    with pytest.raises(ValueError, match="'sgd' optimizer"):
        fused.load_state_dict(sgd.state_dict())
    with pytest.raises(ValueError, match="backend must be one of"):
        SphereSparseSGD(table, backend="faster")


def test_fit_state_round_trip(blobs):
    """Fit.state_dict/load_state_dict continue a run exactly (in memory, no files); so does run() again on a
    Fit a hook stopped by raising (the guide's early stop), whose model is usable where it stopped."""
    cfg = tiny_config(glo_epochs=2, imle_epochs=2)
    straight = Fit(blobs, cfg)
    straight.run()
    first = Fit(blobs, cfg)
    with pytest.raises(Interrupt):
        first.run(hooks=[_interrupt_hook("imle", 3)])
    assert first.model.sample(2).shape[0] == 2
    second = Fit(blobs, cfg)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    second.run()
    first.run()
    a = straight.model.export()[0]
    for other in (second.model.export()[0], first.model.export()[0]):
        assert all(torch.equal(a[k], other[k]) for k in a)


def test_unknown_stages_and_phases_are_refused_and_a_world_gives_any_ranks_rows(blobs):
    from glann_ext.train.world import World

    f = Fit(blobs[:64], tiny_config(init="random"))
    with pytest.raises(ValueError, match=r"stage must be one of \('all', 'glo', 'imle'\), got 'both'"):
        f.run("both")
    assert f.glo.global_step == 0  # refused before anything trained
    with pytest.raises(ValueError, match=r"state phase must be one of \('glo', 'imle'\), got 'done'"):
        f.load_state_dict({"phase": "done", "glo": None, "imle": None})
    world = World(rank=2, size=3)  # (no process group needed: bounds are arithmetic)
    assert [world.bounds(10, rank) for rank in range(3)] == world.all_bounds(10) == [(0, 3), (3, 6), (6, 10)]
    assert world.bounds(10) == (6, 10)


def test_fit_imle_trains_on_the_device_it_is_given():
    """``device`` overrides the config's: a config that says cuda trains on the CPU when asked to."""
    cfg = tiny_config(imle_epochs=1, device="cuda")
    generator = MLP(cfg.noise_dim, 2, hidden=16, batch_norm=False)
    trainer = fit_imle(
        torch.randn(64, 2, generator=torch.Generator().manual_seed(0)), generator, cfg, device="cpu"
    )
    assert trainer.global_step == 2 and next(trainer.generator.parameters()).device == torch.device("cpu")


def test_fit_imle_runs_on_the_configs_threads_and_leaves_the_generator_in_eval_mode():
    """fit_imle ignored ``cfg.threads`` (fit honours it) and left the user's generator in train mode, so
    ``generator(e)`` with BatchNorm differed from ``trainer.generate(e)``."""
    cfg = tiny_config(imle_epochs=1, threads=1)
    seen = []

    class Threads(Hook):  # at an epoch's start: T's own steps run on one thread anyway (threads.py)
        def epoch_started(self, trainer) -> None:
            seen.append(torch.get_num_threads())

    generator = MLP(cfg.noise_dim, 2, hidden=16)  # with BatchNorm
    before = torch.get_num_threads()
    with intra_op_threads(2):
        trainer = fit_imle(
            torch.randn(64, 2, generator=torch.Generator().manual_seed(0)), generator, cfg, hooks=[Threads()]
        )
        assert torch.get_num_threads() == 2  # the caller's setting back
    assert seen and set(seen) == {1} and torch.get_num_threads() == before
    assert not generator.training
    e = torch.randn(8, cfg.noise_dim)
    assert torch.equal(generator(e), trainer.generate(e))


def test_a_fit_object_builds_trains_and_resumes_on_the_configs_threads(
    blobs, blob_file, tmp_path, monkeypatch
):
    """``Fit(images, cfg).run()`` ran on the caller's thread count where ``fit`` (and ``glann train``) take
    ``cfg.threads``: with the two different, the same config and seed trained another model (a review found
    the codes 0.04 apart after 4 epochs). Building (the networks, the codes' PCA), running and loading a state
    (the codes' whitening) each take ``cfg.threads`` now, and the caller's count comes back after each."""
    from glann_ext.train import pipeline

    cfg = tiny_config(glo_epochs=2, imle_epochs=1, threads=2)
    seen = []
    build = pipeline.build_model
    monkeypatch.setattr(
        pipeline, "build_model", lambda *a, **k: seen.append(torch.get_num_threads()) or build(*a, **k)
    )
    whitening = pipeline.code_whitening
    monkeypatch.setattr(
        pipeline, "code_whitening", lambda *a, **k: seen.append(torch.get_num_threads()) or whitening(*a, **k)
    )

    class Threads(Hook):
        def epoch_started(self, trainer) -> None:
            if trainer.stage == "glo":  # T's own steps take one thread whatever the setting (threads.py)
                seen.append(torch.get_num_threads())

    with intra_op_threads(1):
        f = Fit(blobs, cfg)
        assert torch.get_num_threads() == 1
        by_object = f.run(hooks=[Threads()])
        assert torch.get_num_threads() == 1
        state = copy.deepcopy(f.state_dict())
        Fit(blobs, cfg).load_state_dict(state)
        assert torch.get_num_threads() == 1
        # the run folder applies cfg.threads by itself (run.py): the model a Fit trains
        by_folder = train(
            dataclasses.replace(cfg, dataset=blob_file), tmp_path / "run", progress=False, log=lambda s: None
        )
    assert seen[:6] == [2, 2, 2, 2, 2, 2]  # build, two GLO epochs, the stage's whitening; build, whitening
    assert torch.equal(by_object.codes, by_folder.codes)
    for a, b in zip(by_object.G.state_dict().values(), by_folder.G.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _interrupt_hook(stage: str, step: int) -> Hook:
    class Stop(Hook):
        def step_completed(self, trainer, info) -> None:
            interrupt_at(stage, step)(trainer, info)

    return Stop()


def test_cli_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys, tmp_path):
    assert cli.main(["sample", "--run", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such run folder" in err

    def bug(args):
        raise KeyError("an internal bug")

    monkeypatch.setitem(cli._COMMANDS, "sample", (cli._add_sample, bug))
    with pytest.raises(KeyError, match="an internal bug"):
        cli.main(["sample", "--run", str(tmp_path)])


def test_backend_nn_argmin_local_and_chunked():
    q, k = torch.randn(9, 3), torch.randn(30, 3)
    for name in ("fused", "reference"):
        ops = get_ops(name)
        assert torch.equal(ops.nn_argmin(q, k), reference.nn_argmin_exact(q, k))
        assert torch.equal(ops.nn_argmin(q, k.split(7)), reference.nn_argmin_exact(q, k))


def _sparse_adam_by_hand(table, schedule, grads, counts, lr=0.01, betas=(0.5, 0.999), eps=1e-8):
    """torch.optim.SparseAdam's update written out, each step's bias correction from ``counts``."""
    x, m, v = table.clone(), torch.zeros_like(table), torch.zeros_like(table)
    for (idx, _), g, k in zip(schedule, grads, counts):
        m[idx] = betas[0] * m[idx] + (1 - betas[0]) * g
        v[idx] = betas[1] * v[idx] + (1 - betas[1]) * g * g
        size = lr * math.sqrt(1 - betas[1] ** k) / (1 - betas[0] ** k)
        x[idx] -= size * m[idx] / (v[idx].sqrt() + eps)
    return x


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_latent_adam_counts_each_rows_own_updates(backend):
    """``updates=k`` corrects a row's moments with its own update count k, however many optimizer steps
    touched other rows in between; without it the global step counter does, as torch.optim.SparseAdam."""
    torch.manual_seed(0)
    table = torch.randn(6, 4, dtype=torch.float64)
    grads = [torch.randn(2, 4, dtype=torch.float64) for _ in range(4)]
    schedule = [([0, 1], 1), ([2, 3], 1), ([0, 1], 2), ([4, 5], 1)]  # (rows, their own update count)
    own = SphereSparseAdam(table.clone(), lr=0.01, betas=(0.5, 0.999), project=False, backend=backend)
    plain = SphereSparseAdam(table.clone(), lr=0.01, betas=(0.5, 0.999), project=False, backend=backend)
    for (idx, updates), g in zip(schedule, grads):
        own.step(torch.tensor(idx), g, updates=updates)
        plain.step(torch.tensor(idx), g)
    by_rows = _sparse_adam_by_hand(table, schedule, grads, [k for _, k in schedule])
    by_steps = _sparse_adam_by_hand(table, schedule, grads, [1, 2, 3, 4])
    torch.testing.assert_close(own.table, by_rows, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plain.table, by_steps, rtol=1e-12, atol=1e-12)
    assert (by_rows[2:] - by_steps[2:]).abs().min() > 1e-4  # the two counts really differ there (~6e-4)


@pytest.mark.parametrize("steps", ["rows", "global"])
def test_glo_passes_each_codes_update_count(blobs, monkeypatch, steps):
    """latent_adam_steps="rows": every GLO step of epoch e tells the code optimizer its rows' count e + 1;
    "global" leaves the optimizer's own counter."""
    seen = []
    original = SphereSparseAdam.step

    def spy(self, indices, grad, *, updates=None):
        seen.append(updates)
        return original(self, indices, grad, updates=updates)

    monkeypatch.setattr(SphereSparseAdam, "step", spy)
    fit(blobs, tiny_config(glo_epochs=2, latent_adam_steps=steps), stage="glo")
    assert seen == ([1, 1, 1, 2, 2, 2] if steps == "rows" else [None] * 6)  # 96 images, batch 32


def test_every_preset_is_a_valid_config(capsys, tmp_path):
    """The presets validate as they are; the GPU preset refuses a CPU-only torch in one line, before any file
    is written; unknown names list the known ones."""
    from glann_ext.train.config import PRESETS, preset

    for name in PRESETS:
        cfg = preset(name).validate()
        assert cfg.glo_epochs >= 1 and cfg.imle_epochs >= 1, name
    assert preset("laptop").limit == 15000 and preset("laptop-30min").limit is None
    if not torch.cuda.is_available():
        assert cli.main(["train", "--preset", "paper", "--out", str(tmp_path / "p")]) == 2
        err = capsys.readouterr().err  # the preset, not a flag, set the device: the field and its flag
        assert "config field device (--device) 'cuda': " in err and not (tmp_path / "p").exists()
    with pytest.raises(ConfigError, match="unknown preset 'laptop-3min'"):
        preset("laptop-3min")


# Found missing by a mutation test of sampling, eval and the config (2026-12-07).


def test_the_laptop_presets_are_the_recipes_docs_studies_md_measured():
    from glann_ext.train.config import preset

    laptop = preset("laptop")
    # docs/studies.md's table: first 15,000 images, width 32, lr_g 2e-3, T on 16-D noise, batches of 64
    # codes, noise scale 1.5, 16 + 40 epochs
    assert (laptop.limit, laptop.gen_width, laptop.lr_g, laptop.noise_dim) == (15000, 32, 2e-3, 16)
    assert (laptop.imle_batch_size, laptop.sample_noise_scale) == (64, 1.5)
    assert (laptop.glo_epochs, laptop.imle_epochs) == (16, 40)
    thirty = preset("laptop-30min")
    assert (thirty.limit, thirty.imle_batch_size, thirty.glo_epochs, thirty.imle_epochs) == (
        None,
        128,
        30,
        60,
    )
    paper = preset("paper")
    assert (paper.imle_batch_size, paper.sample_noise_scale, paper.lr_g, paper.glo_epochs) == (
        128,
        1.0,
        1e-3,
        200,
    )


# Mutation tests (2026-12-07): each test below fails on a one-line bug that no earlier test caught.
def test_a_fit_stopped_after_its_glo_stage_stays_in_its_glo_phase(blobs):
    """run("glo") leaves the Fit in its GLO phase: its state says "glo", and run("glo") again is a
    no-op (the IMLE phase without an IMLE trainer would make the second call fail), run("imle") then trains T."""
    fit = Fit(blobs, tiny_config(glo_epochs=1, imle_epochs=1))
    fit.run("glo")
    assert fit.state_dict()["phase"] == "glo" and fit.state_dict()["imle"] is None
    assert fit.run("glo").T is None
    assert fit.run("imle").T is not None
