"""Trainers, the GLANN model and run folders: learning, exact NN matching, sampling, exact resume."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import threading
import types

import pytest
import torch
from glann_testing import OPS, Interrupt, blob_images, interrupt_at, tensors_equal, tiny_config

from glann_ext import seeding
from glann_ext._threads import intra_op_threads
from glann_ext.data import GRID_5X5, RING_PACGAN
from glann_ext.errors import CheckpointError, ConfigError, DivergedError, NonFiniteError, RunFolderError
from glann_ext.metrics import mode_coverage
from glann_ext.models import GLANN, MLP, read_model_file
from glann_ext.ops import reference
from glann_ext.train import (
    Fit,
    GLOTrainer,
    Hook,
    IMLETrainer,
    Run,
    TrainConfig,
    fit_imle,
    get_ops,
    load_model,
    loop,
    run_epoch,
    slerp,
    train,
)
from glann_ext.train import checkpoint as ckpt
from glann_ext.train import imle as imle_module
from glann_ext.train import run as run_module
from glann_ext.train.build import adam, build_mapping, check_tensor, load_adam_state, seeded
from glann_ext.train.config import MAXIMA, check_device, load_run_config, preset, saved_config
from glann_ext.train.latents import initial_codes, pca_codes, random_codes
from glann_ext.train.loop import StageTrainer, autocast_for, run_epochs
from glann_ext.train.run import reconstruction_grid
from glann_ext.train.world import World

QUIET = {"progress": False, "log": lambda s: None}  # train() without a bar or log lines


def _rows(out) -> list[dict]:
    """The rows of run folder ``out``'s metrics.jsonl."""
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, the caller's setting back after it."""
    with intra_op_threads(1):
        yield


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, blob_file):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    model = train(
        tiny_config(dataset=blob_file, glo_epochs=3, imle_epochs=3), out, progress=False, log=lambda s: None
    )
    return out, model


def test_glo_loss_decreases_and_codes_stay_on_sphere(blobs):
    cfg = tiny_config(batch_size=32, glo_epochs=6)
    trainer = GLOTrainer(blobs, cfg, get_ops(OPS))
    assert torch.allclose(trainer.codes.norm(dim=1), torch.ones(len(blobs)), atol=1e-5)
    losses = [run_epoch(trainer)["loss"] for _ in range(6)]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0], losses
    assert torch.allclose(trainer.codes.norm(dim=1), torch.ones(len(blobs)), atol=1e-5)
    assert trainer.global_step == 6 * trainer.steps_per_epoch


def test_glo_cosine_schedule_sets_the_rates_of_g_and_of_the_codes(blobs):
    cfg = tiny_config(batch_size=32, glo_epochs=2, glo_lr_schedule="cosine")
    trainer = GLOTrainer(blobs, cfg, get_ops(OPS))
    run_epoch(trainer)  # 3 steps of 6; the last one took its rate at global step 2
    assert trainer.opt_g.param_groups[0]["lr"] == pytest.approx(
        cfg.lr_g * 0.5 * (1 + math.cos(math.pi * 2 / 6))
    )
    assert trainer.opt_z.lr == pytest.approx(cfg.lr_z * 0.5 * (1 + math.cos(math.pi * 2 / 6)))
    run_epoch(trainer)
    assert trainer.opt_z.lr == pytest.approx(cfg.lr_z * 0.5 * (1 + math.cos(math.pi * 5 / 6)))


def test_glo_reconstructs_in_eval_mode_and_trains_in_train_mode(blobs):
    """reconstruct() (the sample grids between epochs) decodes each code on its own, with G's running
    BatchNorm statistics, and the next step trains with batch statistics again, as if it had not run."""
    cfg = tiny_config(batch_size=32, latent_dim=8, init="random")
    probed, plain = GLOTrainer(blobs, cfg, get_ops(OPS)), GLOTrainer(blobs, cfg, get_ops(OPS))
    rec = probed.reconstruct(torch.arange(4))
    torch.testing.assert_close(probed.reconstruct(torch.arange(2)), rec[:2], rtol=0, atol=1e-6)
    assert probed.train_step(torch.arange(32)) == plain.train_step(torch.arange(32))
    assert tensors_equal(probed.G.state_dict(), plain.G.state_dict())


def test_networks_are_built_from_the_run_seed_with_the_configs_options():
    """G comes from the run seed and T from seed + 1 (glann_ext 0.1's weights), each as torch builds it right
    after seeding; T follows mapping_batch_norm and imle_whiten."""
    from glann_ext.models import DCGANGenerator
    from glann_ext.train.build import build_generator, build_mapping

    cfg = TrainConfig(seed=5, noise_dim=4, latent_dim=6, gen_width=8, mapping_hidden=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        G = DCGANGenerator(6, 28, 1, 8)
        torch.manual_seed(6)
        T = MLP(4, 6, 8, 2, output_affine=True)
    assert tensors_equal(build_generator(cfg, (1, 28, 28)).state_dict(), G.state_dict())
    assert tensors_equal(build_mapping(cfg).state_dict(), T.state_dict())
    plain = build_mapping(dataclasses.replace(cfg, mapping_batch_norm=False, imle_whiten=False))
    assert plain.hparams() == {
        "in_dim": 4, "out_dim": 6, "hidden": 8, "layers": 2, "batch_norm": False, "output_affine": False,
    }  # fmt: skip
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules())


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_training_layout_is_channels_last_with_fused_adam_and_computes_the_nchw_step(blobs, threads):
    """G trains in channels-last layout with the fused Adam step on the CPU (for speed only): three steps from
    the same start give the losses, weights and codes of the same trainer in NCHW with the per-tensor Adam
    step, up to float summation order; the exported weights are plain contiguous tensors."""
    cfg = tiny_config(batch_size=32)
    fast, plain = GLOTrainer(blobs, cfg, get_ops(OPS)), GLOTrainer(blobs, cfg, get_ops(OPS))
    conv = [p for p in fast.G.parameters() if p.dim() == 4]
    assert conv and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv)
    assert not all(p.is_contiguous() for p in conv)  # (a (C, 1, k, k) weight is both)
    assert fast.opt_g.defaults["fused"]
    plain.G.to(memory_format=torch.contiguous_format)
    plain.opt_g = torch.optim.Adam(plain.G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    assert all(p.is_contiguous() for p in plain.G.parameters())
    # Adam's first steps move a weight by about lr whatever its gradient's size, so a gradient whose sign the
    # two layouts' float32 sums round apart becomes a difference of lr: about 2% of fc.0's gradients are below
    # 1e-6, and on one thread 3% of its weights ended more than 1e-5 apart. eps 1e-6 (from 1e-8) scales
    # those steps by |g| / (|g| + eps) and keeps the step's arithmetic, eps included.
    for group in (*fast.opt_g.param_groups, *plain.opt_g.param_groups):
        group["eps"] = 1e-6
    with intra_op_threads(threads):
        _three_steps_agree(fast, plain)
    imle = IMLETrainer(fast.codes, MLP(8, cfg.latent_dim, 16), cfg, get_ops(OPS))
    assert imle.opt.defaults["fused"]
    tensors, _ = GLANN(fast.G, fast.codes).export()
    assert all(t.is_contiguous() for t in tensors.values())


def _three_steps_agree(fast: GLOTrainer, plain: GLOTrainer) -> None:
    for batch in fast.epoch_batches()[:3]:
        torch.testing.assert_close(fast.train_step(batch), plain.train_step(batch), rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(fast.G.state_dict().items(), plain.G.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(fast.codes, plain.codes, rtol=1e-4, atol=1e-5)


def test_a_runs_threads_hold_for_that_run_only(tmp_path, blob_file):
    seen = []
    with intra_op_threads(2):
        cfg = tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=1, threads=1)
        train(cfg, tmp_path / "run", progress=False, log=lambda line: seen.append(torch.get_num_threads()))
        assert torch.get_num_threads() == 2  # the caller's setting is back
    assert seen and set(seen) == {1}, seen  # and the run's held while it trained


def test_num_batches_counts_the_batches_an_epoch_makes():
    for bs in (2, 3, 32, 128):
        for n in (1, 2, bs - 1, bs, bs + 1, 2 * bs - 1, 2 * bs, 5 * bs + 3, 1000):
            made = seeding.batches(torch.arange(n), bs)
            assert seeding.num_batches(n, bs) == len(made), (n, bs)


def test_generators_are_seeded_by_the_documented_formula_without_collisions():
    """A resumed run redraws what the interrupted one drew only if the seeds stay what they were: (seed *
    1_000_003 + stage * 10_007 + epoch + block * 998_244_353) mod 2^63, the stage numbered as listed. No
    (stage, epoch, block) shares another's stream. Found by mutation testing: seeds without the block's
    factor (epoch 1 of block 0 = epoch 0 of block 1), or reduced mod 2^62, passed every test."""
    for seed, stage, number, epoch, block in ((7, "glo", 2, 3, 2), (2**61 + 5, "spread", 9, 1, 0)):
        want = (seed * 1_000_003 + number * 10_007 + epoch + block * 998_244_353) % 2**63
        assert seeding.generator(seed, stage, epoch, block=block).initial_seed() == want
    seeds = {
        seeding.generator(0, stage, epoch, block=block).initial_seed()
        for stage in ("init", "glo", "imle", "sample", "spread")
        for epoch in range(3)
        for block in range(3)
    }
    assert len(seeds) == 5 * 3 * 3


def test_normal_rows_are_the_blocks_of_their_own_generators():
    """Rows of a table spanning three blocks, by range or by index (any order, repeats, across blocks), are
    the rows of the blocks drawn one by one from generator(seed, stage, epoch, block=b), the last block only
    as long as the table; an empty range gives (0, dim) and a stepped range is refused. Found by mutation
    testing: a (0,) result for an empty range, or a stepped range read as contiguous rows, passed every test."""
    rows_per_block = seeding.BLOCK_ROWS
    total, dim = 2 * rows_per_block + 5, 2
    table = torch.cat(
        [
            torch.randn(n, dim, generator=seeding.generator(3, "imle", 4, block=b))
            for b, n in enumerate((rows_per_block, rows_per_block, 5))
        ]
    )
    for rows in (range(rows_per_block - 2, rows_per_block + 3), range(2 * rows_per_block, total)):
        assert torch.equal(seeding.normal_rows(rows, total, dim, 3, "imle", 4), table[rows.start : rows.stop])
    rows = torch.tensor([2 * rows_per_block + 4, 7, rows_per_block + 1, 7])
    assert torch.equal(seeding.normal_rows(rows, total, dim, 3, "imle", 4), table[rows])
    assert seeding.normal_rows(range(9, 9), total, dim, 3, "imle", 4).shape == (0, dim)
    with pytest.raises(ValueError, match="a range of rows must have step 1"):
        seeding.normal_rows(range(0, 10, 2), total, dim, 3, "imle", 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prefix_normal_rows_do_not_depend_on_how_many_are_drawn(dtype):
    """The first k rows of prefix_normal are the same for every n >= k at any width, where torch.randn's
    are not (its normal kernel works in blocks of 16 values and redraws a partial last one); where n * dim
    is a multiple of 16 they are torch.randn's own rows, so the samples of every preset stay as they were."""
    gen = lambda: seeding.generator(4, "sample")  # noqa: E731
    changed = 0
    for dim in (1, 3, 5, 7, 12, 17, 31):
        big = seeding.prefix_normal(70, dim, gen(), dtype)
        assert big.shape == (70, dim) and big.dtype == dtype
        for n in (0, 1, 2, 5, 13, 33):
            assert torch.equal(seeding.prefix_normal(n, dim, gen(), dtype), big[:n])
            changed += not torch.equal(torch.randn(n, dim, generator=gen(), dtype=dtype), big[:n])
    assert changed > 10  # the check can fail: torch.randn itself is not prefix-stable at these widths
    for n, dim in ((1, 16), (7, 32), (3, 64), (8, 2)):
        assert torch.equal(
            seeding.prefix_normal(n, dim, gen(), dtype), torch.randn(n, dim, generator=gen(), dtype=dtype)
        )


def test_each_epoch_visits_the_data_in_the_order_of_its_seed_stage_and_epoch(blobs):
    """Epoch e's batches are the (seed, stage, e) permutation cut into batches: a new order every epoch, and
    another for each stage."""
    cfg = tiny_config(batch_size=32, imle_batch_size=32, init="random")
    glo = GLOTrainer(blobs, cfg, get_ops(OPS))
    imle = IMLETrainer(torch.randn(96, 3), MLP(2, 3, 8, 2), cfg, get_ops(OPS))
    orders = []
    for trainer in (glo, glo, imle):
        want = seeding.batches(seeding.epoch_permutation(96, cfg.seed, trainer.stage, trainer.epoch), 32)
        got = trainer.epoch_batches()
        assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(got, want))
        orders.append(torch.cat(got))
        trainer.epoch += 1
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], orders[2])


def test_an_epoch_resumed_from_a_checkpoint_without_a_tally_reports_the_mean_of_its_remaining_steps():
    """glann_ext 0.1's checkpoints hold no tally: the epoch resumed from one reports the steps it ran and
    their mean loss (not their sum over the epoch's 4 steps)."""

    class Losses(Hook):
        def __init__(self):
            self.seen = []

        def step_completed(self, trainer, info):
            self.seen.append(info["loss"])

    torch.manual_seed(0)
    cfg = TrainConfig(noise_dim=2, imle_batch_size=16, ops=OPS)
    trainer = IMLETrainer(torch.randn(64, 3), MLP(2, 3, 8, 2), cfg, get_ops(OPS))
    state = {**trainer.state_dict(), "step_in_epoch": 1, "global_step": 1}
    del state["tally"]
    trainer.load_state_dict(state)
    hook = Losses()
    row = run_epoch(trainer, [hook])
    assert row["steps"] == len(hook.seen) == 3 and row["step"] == 4
    assert row["loss"] == pytest.approx(sum(hook.seen) / 3, rel=1e-12)


def test_progress_bars_show_each_stage_with_its_loss_and_match_distance(tmp_path, blob_file, capsys):
    train(tiny_config(dataset=blob_file), tmp_path / "run", progress=True, log=lambda s: None)
    err = capsys.readouterr().err
    assert "GLO 2/2" in err and "IMLE 2/2" in err, err
    assert "loss=" in err and "match=" in err, err


def _signed_pca(x: torch.Tensor, k: int) -> torch.Tensor:
    """The centred rows ``x`` on their top ``k`` principal directions, each direction's sign chosen so that
    its largest-magnitude entry is positive (pca_codes' rule: codes that do not depend on the solver)."""
    x = x - x.mean(0)
    vh = torch.linalg.svd(x, full_matrices=False)[2][:k]
    return x @ (vh * vh.gather(1, vh.abs().argmax(1, keepdim=True)).sign()).T


def test_pca_init_spans_the_top_principal_directions(blobs):
    codes = pca_codes(blobs, 8)
    expected = _signed_pca(blobs.reshape(len(blobs), -1).double(), 8)
    torch.testing.assert_close(codes.double(), expected, rtol=1e-4, atol=1e-4)
    assert codes[:, 0].var() >= codes[:, 1].var() >= codes[:, 7].var()
    with pytest.raises(ValueError, match="init must be 'pca' or 'random', got 'svd'"):
        initial_codes(blobs, 8, "svd", get_ops(OPS).project)


def test_pca_init_above_the_exact_size_is_the_randomized_basis_of_the_same_directions():
    """Colour 20 x 20 images (1,200 pixels) take the randomized SVD; on data of rank 8 with distinct
    variances plus noise it finds the exact principal directions, and the same seed gives the same codes."""
    from glann_ext.train import latents

    g = torch.Generator().manual_seed(3)
    n, p = 400, 3 * 20 * 20
    assert p > latents.EXACT_PCA_PIXELS
    scales = torch.tensor([40.0, 30, 22, 16, 11, 8, 5.5, 4], dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.randn(p, 8, generator=g, dtype=torch.float64))
    x = (torch.randn(n, 8, generator=g, dtype=torch.float64) * scales) @ basis.T
    x = x + 0.05 * torch.randn(n, p, generator=g, dtype=torch.float64)
    images = x.float().reshape(n, 3, 20, 20)
    codes = pca_codes(images, 8, seed=1)
    expected = _signed_pca(images.reshape(n, -1).double(), 8)
    torch.testing.assert_close(codes.double(), expected, rtol=1e-3, atol=1e-3)
    assert torch.equal(codes, pca_codes(images, 8, seed=1))
    # more directions than the signal has: the same top 8, then the noise's (small) directions
    wide = pca_codes(images, 12, seed=1)
    torch.testing.assert_close(wide[:, :8].abs(), codes.abs(), rtol=1e-3, atol=1e-3)
    assert wide[:, 8:].abs().max() < 0.05 * codes[:, 7].abs().max()
    # more directions than there are images (rank <= 40): the rest is seeded noise 1e-3 x the codes' std
    few = pca_codes(images[:40], 64, seed=1).double()
    pad, top = few[:, 40:], few[:, :40]
    assert 0.5e-3 < float(pad.std() / top.std()) < 2e-3
    assert torch.equal(few, pca_codes(images[:40], 64, seed=1).double())


def test_the_randomized_pca_captures_the_top_variance_of_a_slowly_decaying_spectrum():
    """A spectrum decaying over a decade across 60 directions (the hard case for a randomized SVD): the
    randomized basis (1,200 pixels) captures all but 0.1% of the variance the exact top 8 directions hold.
    Its 3 power iterations capture 99.96% here, 2 would give 99.78% and 1 98.1% (found by mutation testing)."""
    g = torch.Generator().manual_seed(3)
    n, p, r = 400, 1200, 60
    basis, _ = torch.linalg.qr(torch.randn(p, r, generator=g, dtype=torch.float64))
    x = torch.randn(n, r, generator=g, dtype=torch.float64) * torch.logspace(0, -1, r, dtype=torch.float64)
    x = (x @ basis.T + 0.05 * torch.randn(n, p, generator=g, dtype=torch.float64)).float()
    codes = pca_codes(x, 8, seed=1).double()
    best = torch.linalg.svdvals(x.double() - x.double().mean(0))[:8].square().sum()
    assert codes.square().sum() / best > 0.999


def test_imle_matching_is_the_true_nearest_neighbour():
    torch.manual_seed(0)
    targets = reference.project_to_sphere_reference(torch.randn(200, 6))
    # M = imle_noise_multiple x N, rounded to the nearest draw: 1.26 x 10 targets = 12.6 -> 13
    few = TrainConfig(noise_dim=4, imle_noise_multiple=1.26, ops=OPS)
    assert IMLETrainer(targets[:10], MLP(4, 6, 16, 2), few, get_ops(OPS)).num_noise == 13
    cfg = TrainConfig(noise_dim=4, imle_noise_multiple=3, ops=OPS)
    trainer = IMLETrainer(targets, MLP(4, 6, 16, 2), cfg, get_ops(OPS))
    noise, idx, _ = trainer.match(epoch=0)
    assert noise.shape == (600, 4) and idx.shape == (200,) and idx.dtype == torch.int64
    samples = trainer.generate(noise)
    assert torch.equal(idx, reference.nn_argmin_exact(targets, samples))
    # The regression then pulls exactly those matched samples towards their targets.
    before = ((samples[idx] - targets) ** 2).sum(1).mean()
    for _ in range(5):
        run_epoch(trainer)
    after = ((trainer.generate(noise)[idx] - targets) ** 2).sum(1).mean()
    assert after < before
    # plain IMLE matches every epoch anew: an epoch-end checkpoint carries no stale matching
    assert trainer.matched_noise is None and trainer.state_dict()["matched_noise"] is None


def _unique_match_literal(queries, keys):
    """The rounds of :func:`unique_nn_match`, written out one query at a time."""
    d = torch.cdist(queries.double(), keys.double()) ** 2
    idx, free, todo = [-1] * len(queries), set(range(len(keys))), list(range(len(queries)))
    while todo:
        claims = {}
        for q in todo:
            k = min(free, key=lambda k: (d[q, k].item(), k))
            claims.setdefault(k, []).append(q)
        for k, qs in claims.items():
            winner = min(qs, key=lambda q: (d[q, k].item(), q))
            idx[winner] = k
            free.discard(k)
            todo.remove(winner)
    return torch.tensor(idx)


@pytest.mark.parametrize("dense", [True, False])
def test_unique_matching_gives_distinct_keys_by_the_greedy_rounds(monkeypatch, dense):
    if not dense:
        monkeypatch.setattr(imle_module, "DENSE_MATCH_LIMIT", 0)  # the nn_argmin-per-round path
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 2, generator=g) * 3
    queries = (centres[torch.arange(40) % 3] + 0.1 * torch.randn(40, 2, generator=g)).double()
    keys = torch.randn(50, 2, generator=g).double() * 3  # clustered queries contend for the same keys
    ops = get_ops(OPS)
    idx = imle_module.unique_nn_match(queries, keys, ops.nn_argmin)
    assert idx.dtype == torch.int64 and len(set(idx.tolist())) == 40
    assert torch.equal(idx, _unique_match_literal(queries, keys))
    nearest = reference.nn_argmin_exact(queries, keys)
    assert not torch.equal(idx, nearest)  # plain nearest neighbours share keys here
    with pytest.raises(ValueError, match=r"at least as many keys \(39\) as queries \(40\)"):
        imle_module.unique_nn_match(queries, keys[:39], ops.nn_argmin)
    # as many keys as queries (M = N, imle_noise_multiple 1) is enough: every key is taken once
    square = imle_module.unique_nn_match(queries, keys[:40], ops.nn_argmin)
    assert torch.equal(square.sort().values, torch.arange(40))
    assert torch.equal(square, _unique_match_literal(queries, keys[:40]))
    # exact ties: copies of one query claim the same key at the same distance (the lowest query index
    # wins, the others move on), and copies of a key are equally near (the lowest key index is taken first)
    tied_q = torch.randint(-2, 3, (30, 2), generator=g).double()
    tied_q[20:] = tied_q[:10]
    tied_k = torch.randint(-2, 3, (40, 2), generator=g).double()
    tied_k[30:] = tied_k[:10]
    idx = imle_module.unique_nn_match(tied_q, tied_k, ops.nn_argmin)
    assert len(set(idx.tolist())) == 30 and torch.equal(idx, _unique_match_literal(tied_q, tied_k))


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize(("argument", "row", "value"), [("keys", 7, float("nan")), ("queries", 3, float("nan")),
                                                       ("keys", 0, float("-inf")), ("queries", 4, float("inf"))])  # fmt: skip
def test_unique_matching_refuses_non_finite_inputs_naming_the_row(monkeypatch, dense, argument, row, value):
    """A NaN distance wins no key, so the greedy rounds never ended: a T that diverged to NaN hung training
    with imle_match="unique" (plain matching's nn_argmin refuses it). Both paths now refuse NaN and Inf up
    front, as nn_argmin does. Run in a thread so that a regression fails instead of hanging the suite."""
    if not dense:
        monkeypatch.setattr(imle_module, "DENSE_MATCH_LIMIT", 0)
    g = torch.Generator().manual_seed(1)
    inputs = {"queries": torch.randn(6, 3, generator=g), "keys": torch.randn(9, 3, generator=g)}
    inputs[argument][row, 1] = value
    raised = []

    def match():
        try:
            imle_module.unique_nn_match(inputs["queries"], inputs["keys"], get_ops(OPS).nn_argmin)
        except NonFiniteError as exc:
            raised.append(exc)

    worker = threading.Thread(target=match, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "unique_nn_match did not return on a non-finite input"
    assert [str(e) for e in raised] == [f"unique_nn_match: {argument} row {row} contains NaN or Inf"]


def test_unique_matching_in_the_trainer_reports_each_pairs_squared_distance():
    """imle_match="unique": the trainer matches the targets one-to-one to the epoch's draws by the greedy
    rounds, reports each matched pair's squared distance (summed over coordinates) and logs their mean."""
    torch.manual_seed(0)
    targets = torch.randn(40, 3)
    cfg = TrainConfig(noise_dim=2, imle_noise_multiple=1.5, imle_match="unique", ops=OPS)
    trainer = IMLETrainer(targets, MLP(2, 3, 16, 2), cfg, get_ops(OPS))
    noise, idx, dist = trainer.match(epoch=0)
    samples = trainer.generate(noise)
    assert torch.equal(idx, _unique_match_literal(targets, samples))
    torch.testing.assert_close(dist, ((targets - samples[idx]) ** 2).sum(1))
    trainer.begin_epoch()
    assert trainer.last_match_distance == pytest.approx(dist.double().mean().item(), rel=1e-6)


def test_imle_options_cosine_rate_and_precision_term():
    torch.manual_seed(0)
    targets = torch.randn(64, 3)
    cfg = TrainConfig(
        noise_dim=2,
        batch_size=32,
        imle_epochs=4,
        imle_lr_schedule="cosine",
        imle_precision_weight=0.5,
        ops=OPS,
    )
    trainer = IMLETrainer(targets, MLP(2, 3, 16, 2), cfg, get_ops(OPS))
    assert trainer.lr_at(0) == cfg.imle_lr and trainer.lr_at(8) == 0.0
    assert trainer.lr_at(4) == pytest.approx(cfg.imle_lr / 2)
    assert trainer.lr_at(9) == 0.0  # past the last step the rate stays 0 (the cosine would climb back)
    fresh = trainer.precision_noise(1)
    assert fresh.shape == (2, 32, 2) and torch.equal(fresh, trainer.precision_noise(1))
    assert not torch.equal(fresh, trainer.precision_noise(2))
    # its own stream, not the matching's (seeded from the IMLE stage's, its rows were that epoch's first draws)
    own = torch.randn(2, 32, 2, generator=seeding.generator(cfg.seed, "imle_precision", 1))
    assert torch.equal(fresh, own)
    table = trainer.noise(range(trainer.num_noise), 1)
    assert not bool((fresh.reshape(-1, 1, 2) == table[None]).all(-1).any())
    run_epoch(trainer)
    assert trainer.opt.param_groups[0]["lr"] == trainer.lr_at(1)
    assert IMLETrainer(targets, MLP(2, 3, 16, 2), TrainConfig(), get_ops(OPS)).precision_noise(0) is None
    few = IMLETrainer(targets[:20], MLP(2, 3, 16, 2), cfg, get_ops(OPS))  # one batch of the 20 targets
    assert few.precision_noise(0).shape == (1, 20, 2)
    for bad in ({"imle_lr_schedule": "step"}, {"imle_match": "hungarian"}, {"imle_precision_weight": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TrainConfig(**bad).validate()


def test_adaptive_imle_rematches_a_target_only_below_its_threshold_not_at_it():
    """With no shrink and T unchanged between epochs, every sample sits exactly at its target's threshold:
    "fitted" is strictly below it (the paper's code), so nothing is re-matched and every target ages by one
    epoch (a <= re-matched them all and passed every other test)."""
    torch.manual_seed(0)
    cfg = TrainConfig(
        noise_dim=2, imle_adaptive=True, imle_adaptive_shrink=0.0, imle_staleness=1, imle_force_rematch=100,
        ops=OPS,
    )  # fmt: skip
    trainer = IMLETrainer(torch.randn(40, 3), MLP(2, 3, 8, 2, batch_norm=False), cfg, get_ops(OPS))
    trainer.begin_epoch()
    assert trainer.last_rematched == 1.0 and bool((trainer.since_match == 0).all())
    trainer.epoch = 1  # as the loop moves on, T not stepped
    trainer.begin_epoch()
    assert trainer.last_rematched == 0.0 and bool((trainer.since_match == 1).all())


def test_the_imle_stage_decays_the_weights_by_imle_weight_decay():
    """T's Adam takes imle_weight_decay (L2 on T's weights): with a zero gradient a step shrinks each weight
    by lr * sign(w) in Adam's first step."""
    cfg = TrainConfig(noise_dim=2, imle_weight_decay=0.25, imle_lr=0.01, ops=OPS)
    trainer = IMLETrainer(torch.randn(8, 3), MLP(2, 3, 4, 1, batch_norm=False), cfg, get_ops(OPS))
    assert trainer.opt.param_groups[0]["weight_decay"] == 0.25
    before = [p.detach().clone() for p in trainer.generator.parameters()]
    for p in trainer.generator.parameters():
        p.grad = torch.zeros_like(p)
    trainer.opt.step()
    for p, b in zip(trainer.generator.parameters(), before):
        torch.testing.assert_close(p.detach(), b - 0.01 * torch.sign(b), rtol=0, atol=1e-4)


def test_the_precision_term_is_weighted_by_imle_precision_weight():
    def first_step_loss(weight: float) -> float:
        torch.manual_seed(0)  # the same targets and T for every weight
        targets = torch.randn(64, 3)
        cfg = TrainConfig(noise_dim=2, imle_batch_size=32, imle_precision_weight=weight, ops=OPS)
        trainer = IMLETrainer(targets, MLP(2, 3, 16, 2), cfg, get_ops(OPS))
        trainer.begin_epoch()
        return trainer.train_step(torch.arange(32))

    # the loss is the IMLE term plus weight x the precision term, both the same before the first step
    half, one, two = (first_step_loss(w) for w in (0.5, 1.0, 2.0))
    assert one > half and two - one == pytest.approx(2 * (one - half), rel=1e-5)


def test_each_imle_steps_loss_is_its_matched_pairs_plus_its_own_fresh_draws_on_their_nearest_targets():
    """Each step's loss recomputed by hand: the MSE of T on the batch's matched noise against the batch's
    targets, plus imle_precision_weight x the MSE of T on that step's own fresh noise (after the matched noise
    in one forward pass, so BatchNorm sees one batch) against each output's nearest target."""
    torch.manual_seed(0)
    targets = torch.randn(64, 3)
    cfg = TrainConfig(noise_dim=2, imle_batch_size=16, imle_precision_weight=0.5, ops=OPS)
    trainer = IMLETrainer(targets, MLP(2, 3, 16, 2), cfg, get_ops(OPS))
    mse = torch.nn.functional.mse_loss
    trainer.begin_epoch()
    for k, batch in enumerate(trainer.epoch_batches()[:3]):
        twin = copy.deepcopy(trainer.generator).train()  # T as the step finds it
        with torch.no_grad():
            out = twin(torch.cat([trainer.matched_noise[batch], trainer.fresh[k]]))
        near = targets[reference.nn_argmin_exact(out[16:], targets)]
        want = mse(out[:16], targets[batch]) + 0.5 * mse(out[16:], near)
        assert trainer.train_step(batch) == pytest.approx(want.item(), rel=1e-5), k
        trainer.step_in_epoch += 1  # as run_epoch counts the steps
        trainer.global_step += 1


def test_imle_steps_are_adam_steps_on_each_batchs_own_gradient():
    """Three IMLE steps replayed with torch's per-tensor Adam on a copy of T: each update follows from that
    step's loss alone (gradients zeroed in between, the precision term's included) at its cosine rate."""
    torch.manual_seed(0)
    targets = torch.randn(48, 3)
    cfg = TrainConfig(
        noise_dim=2,
        imle_batch_size=16,
        imle_epochs=1,
        imle_lr_schedule="cosine",
        imle_precision_weight=0.5,
        ops=OPS,
    )
    trainer = IMLETrainer(targets, MLP(2, 3, 8, 2, batch_norm=False), cfg, get_ops(OPS))
    twin = copy.deepcopy(trainer.generator)
    opt = torch.optim.Adam(twin.parameters(), cfg.imle_lr, cfg.imle_betas, weight_decay=cfg.imle_weight_decay)
    mse = torch.nn.functional.mse_loss
    trainer.begin_epoch()
    for step, batch in enumerate(trainer.epoch_batches()):
        opt.param_groups[0]["lr"] = cfg.imle_lr * 0.5 * (1 + math.cos(math.pi * step / 3))
        opt.zero_grad()
        out = twin(torch.cat([trainer.matched_noise[batch], trainer.fresh[step]]))
        near = targets[reference.nn_argmin_exact(out[16:].detach(), targets)]
        (mse(out[:16], targets[batch]) + 0.5 * mse(out[16:], near)).backward()
        opt.step()
        trainer.train_step(batch)
        trainer.step_in_epoch += 1
        trainer.global_step += 1
    for a, b in zip(trainer.generator.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_sampling_shapes_dtypes_ranges_and_seeds(trained_run):
    _, model = trained_run
    a = model.sample(10, seed=1)
    assert a.shape == (10, 1, 28, 28) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, model.sample(10, seed=1))
    assert not torch.equal(a, model.sample(10, seed=2))
    assert model.sample(0).shape == (0, 1, 28, 28)
    g = model.sample_gaussian(5, seed=0)
    assert g.shape == (5, 1, 28, 28) and torch.equal(g, model.sample_gaussian(5, seed=0))
    assert model.reconstruct([0, 5]).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="n must be"):
        model.sample(-1)


def test_interpolation(trained_run):
    _, model = trained_run
    path = model.interpolate(0, 1, steps=5, space="latent")
    assert path.shape == (5, 1, 28, 28)
    torch.testing.assert_close(path[[0, -1]], model.reconstruct([0, 1]))
    t = torch.linspace(0, 1, 7)
    arc = slerp(model.codes[0], model.codes[1], t)
    assert torch.allclose(arc.norm(dim=1), torch.ones(7), atol=1e-5)  # slerp stays on the sphere
    e = model.noise(2, seed=3)
    noise_path = model.interpolate(e[0], e[1], steps=4, space="noise")
    torch.testing.assert_close(noise_path[0], model.decode(model.map_noise(e[:1]))[0])
    with pytest.raises(ValueError, match="space"):
        model.interpolate(0, 1, space="pixels")


def test_inversion_finds_codes_that_reconstruct_new_images(trained_run, blobs):
    _, model = trained_run
    images = torch.from_numpy(blob_images(4, 28, seed=123)).float().div(255)[:, None]
    codes, recon = model.invert(images, steps=30, restarts=1)
    assert codes.shape == (4, model.codes.shape[1]) and recon.shape == images.shape
    assert torch.allclose(codes.norm(dim=1), torch.ones(4), atol=1e-5)
    ops = get_ops(OPS)
    start = ops.lap_loss(model.sample_gaussian(4, seed=0), images)
    assert ops.lap_loss(recon, images) < start
    with pytest.raises(ValueError, match="images must be shaped"):
        model.invert(torch.zeros(2, 3, 28, 28))
    with pytest.raises(
        ValueError, match=r"got \(2, 28, 28, 1\) \(channels last\? images.permute\(0, 3, 1, 2\)\)"
    ):
        model.invert(torch.zeros(2, 28, 28, 1))  # fit gave this hint, invert did not
    # one image of the model's shape: unsqueeze(0), right for any channel count (unsqueeze(1), the hint
    # until 0.3.9, made one RGB image three grey ones)
    with pytest.raises(ValueError, match=r"got \(1, 28, 28\) \(one image\? images.unsqueeze\(0\)\)$"):
        model.invert(images[0])
    with pytest.raises(ValueError, match=r"got \(5, 28, 28\) \(one channel\? images.unsqueeze\(1\)\)$"):
        model.invert(torch.zeros(5, 28, 28))


def test_inversion_starts_from_the_nearest_reconstruction_of_codes_drawn_from_the_whole_table():
    from glann_ext.models import DCGANGenerator

    torch.manual_seed(0)
    G = DCGANGenerator(latent_dim=8, image_size=28, channels=1, width=8)
    with torch.no_grad():  # weights 6x their init, so that each code renders its own image
        for w in G.parameters():
            w.mul_(6 if w.dim() > 1 else 1)
    model = GLANN(G, get_ops(OPS).project(torch.randn(3000, 8)), None, ops=OPS)  # more codes than the pool
    idx = torch.cat([torch.arange(0, 3000, 150), torch.arange(2950, 3000, 5)])  # the table's end included
    images = model.reconstruct(idx)
    # no step taken: each restart returns its start code; the first starts from the pool code whose
    # rendering is nearest (a training image is its own code's rendering), the others from random ones
    first, _ = model.invert(images, steps=0, restarts=1)
    exact = (first == model.codes[idx]).all(1)
    assert exact.float().mean() > 0.5 and exact[idx >= 2048].any()  # the pool: 2048 codes of all 3000
    best, recon = model.invert(images, steps=0, restarts=4)
    loss = get_ops(OPS).lap_loss
    # the best restart is kept per image, never a later, worse one (batch and single decodes round apart)
    ours, restart0 = (torch.stack([loss(x[i : i + 1], images[i : i + 1]) for i in range(len(idx))])
                      for x in (recon, model.decode(first)))  # fmt: skip
    assert (ours <= restart0 * (1 + 1e-5)).all()
    assert torch.equal(best[exact], first[exact])


def test_run_folder_contents_and_reload(trained_run):
    out, model = trained_run
    assert json.loads((out / "config.json").read_text())["glo_epochs"] == 3
    rows = _rows(out)
    assert [r["stage"] for r in rows] == ["glo"] * 3 + ["imle"] * 3
    again = load_model(out)
    assert torch.equal(again.sample(6, seed=4), model.sample(6, seed=4))


IMLE_OPTIONS = {"imle_match": "unique", "imle_lr_schedule": "cosine", "imle_precision_weight": 0.5}


@pytest.mark.parametrize("options", [{}, IMLE_OPTIONS], ids=["paper", "imle-options"])
def test_resume_after_interruptions_is_bit_identical(tmp_path, blob_file, options):
    cfg = {"dataset": blob_file, "glo_epochs": 3, "imle_epochs": 3, "ckpt_every": 2, **options}
    straight = tmp_path / "straight"
    train(tiny_config(**cfg), straight, progress=False, log=lambda s: None)

    broken = tmp_path / "broken"
    # 3 steps per epoch: GLO dies at step 5 (mid-epoch, checkpoint at 4), IMLE at step 5 (checkpoint at 4).
    with pytest.raises(Interrupt):
        train(tiny_config(**cfg), broken, progress=False, on_step=interrupt_at("glo", 5), log=lambda s: None)
    assert ckpt.load_latest(broken)["glo"]["global_step"] == 4
    with pytest.raises(Interrupt):
        train(None, broken, progress=False, on_step=interrupt_at("imle", 5), log=lambda s: None)
    state = ckpt.load_latest(broken)
    assert state["phase"] == "imle" and state["imle"]["global_step"] == 4
    assert state["imle"]["matched_noise"] is not None  # this epoch's matching travels with the checkpoint
    train(None, broken, progress=False, log=lambda s: None)

    a, b = ckpt.load_latest(straight), ckpt.load_latest(broken)
    assert tensors_equal(a["glo"], b["glo"]) and tensors_equal(a["imle"], b["imle"])
    assert tensors_equal(
        read_model_file(straight / "model.safetensors"), read_model_file(broken / "model.safetensors")
    )


@pytest.mark.parametrize("whiten", [True, False])
def test_a_run_without_its_model_file_samples_from_its_checkpoint(tmp_path, blob_file, whiten):
    """An IMLE stage interrupted before the model file is written still samples: the model rebuilt from the
    checkpoint is the one the finished stage would have saved at that step (with whitened IMLE the
    checkpoint holds T.net, and T's output map is the codes' inverse whitening, recomputed)."""
    # a constant IMLE rate: with the cosine schedule the first epoch's steps depend on the epochs to come
    cfg = tiny_config(
        dataset=blob_file, glo_epochs=1, imle_epochs=2, imle_whiten=whiten, imle_lr_schedule="constant"
    )
    straight = train(dataclasses.replace(cfg, imle_epochs=1), tmp_path / "straight", progress=False,
                     log=lambda s: None)  # fmt: skip
    with pytest.raises(Interrupt):  # 3 steps an epoch: a checkpoint at the first IMLE epoch's end
        train(cfg, tmp_path / "broken", progress=False, on_step=interrupt_at("imle", 4), log=lambda s: None)
    assert not (tmp_path / "broken" / "model.safetensors").exists()
    partial = load_model(tmp_path / "broken")
    partial.calibrate_sampler()  # what the finished run computed when it wrote its model file
    assert isinstance(partial.T, MLP) and tensors_equal(partial.export()[0], straight.export()[0])
    assert torch.equal(partial.sample(6, seed=2), straight.sample(6, seed=2))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_atomic({"step": 1, "w": torch.ones(3)}, path)

    def dying_save(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic({"step": 2}, path)
    monkeypatch.undo()
    assert ckpt.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind


def test_the_manifest_is_replaced_never_rewritten_in_place(tmp_path):
    """write_manifest renames a complete new file over the old one, so a reader that opened the old manifest
    still reads it whole (found by mutation testing: a plain in-place write passed every test)."""
    ckpt.checkpoint_dir(tmp_path).mkdir()
    ckpt.write_manifest(tmp_path, {"seq": 0})
    path = ckpt.checkpoint_dir(tmp_path) / ckpt.MANIFEST_FILE
    with open(path, "rb") as reader:
        ckpt.write_manifest(tmp_path, {"seq": 1, "step_dir": "step-00000001"})
        assert json.loads(reader.read()) == {"seq": 0}
    assert json.loads(path.read_text()) == {"seq": 1, "step_dir": "step-00000001"}
    assert [p.name for p in path.parent.iterdir()] == [ckpt.MANIFEST_FILE]  # no temp file left behind


def test_stage_glo_is_refused_while_the_imle_stage_is_unfinished(tmp_path, blob_file):
    """`--stage glo` on a run stopped in its IMLE stage wrote model.safetensors with T as the stopped stage
    left it, and said "model written"."""
    out, _ = _stopped_in_imle(tmp_path, blob_file)
    with pytest.raises(
        RunFolderError, match=r"stage glo \(--stage glo\): the GLO stage is finished and the IMLE "
    ):
        train(None, out, stage="glo", **QUIET)
    assert not (out / "model.safetensors").exists()
    train(None, out, **QUIET)
    assert load_model(out).T is not None
    train(None, out, stage="glo", **QUIET)  # a finished run: nothing to do, as with any stage


def test_stage_rules_and_config_checks(tmp_path, blob_file):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match=r"stage imle \(--stage imle\) needs a finished GLO stage"):
        train(
            tiny_config(dataset=blob_file, glo_epochs=1),
            out,
            stage="imle",
            progress=False,
            log=lambda s: None,
        )
    train(tiny_config(dataset=blob_file, glo_epochs=1), out, stage="glo", progress=False, log=lambda s: None)
    assert load_model(out).T is None
    with pytest.raises(RunFolderError, match=r"different config .*latent_dim"):
        train(tiny_config(dataset=blob_file, glo_epochs=1, latent_dim=4), out, progress=False)
    model = train(None, out, stage="imle", progress=False, log=lambda s: None)
    assert model.sample(3).shape == (3, 1, 28, 28)
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=1).validate()
    with pytest.raises(ConfigError, match="ops must be one of"):
        TrainConfig(ops="fast").validate()


# (field, a value just outside its range, the nearest value inside): every range TrainConfig.validate checks
CONFIG_BOUNDS = [
    ("latent_dim", 0, 1), ("noise_dim", 0, 1), ("batch_size", 1, 2), ("imle_batch_size", 1, 2),
    ("glo_epochs", -1, 0), ("imle_epochs", -1, 0), ("lr_g", 0.0, 1e-9), ("lr_g", math.inf, 1.0),
    ("lr_z", 0.0, 1e-9), ("imle_lr", 0.0, 1e-9), ("imle_lr", math.nan, 1.0), ("imle_weight_decay", -1e-9, 0.0),
    ("imle_noise_multiple", 0.99, 1.0), ("betas", (0.5, 1.0), (0.0, 0.999)), ("betas", (-0.1, 0.9), (0.0, 0.9)),
    ("imle_betas", (1.0, 0.9), (0.999, 0.9)), ("gen_width", 3, 4), ("gen_depth", -1, 0),
    ("mapping_hidden", 0, 1), ("mapping_layers", 0, 1), ("ckpt_every", -1, 0), ("sample_every", -1, 0),
    ("l2_weight", -1e-9, 0.0), ("vgg_weight", -1e-9, 0.0), ("imle_precision_weight", -1e-9, 0.0),
    ("imle_adaptive_shrink", 1.0, 0.999), ("imle_adaptive_shrink", -1e-9, 0.0), ("imle_staleness", -1, 0),
    ("imle_force_rematch", 0, 1), ("imle_reject_radius", -1e-9, 0.0), ("balance_draws", -1e-9, 0.0),
    ("balance_quantile", 1.001, 1.0), ("balance_quantile", -1e-9, 0.0), ("sample_noise_scale", 0.0, 1e-9),
    ("sample_noise_scale", 10.001, 10.0), ("sample_spread", -1e-9, 0.0), ("sample_spread", 4.001, 4.0),
    ("sample_local_spread", -1e-9, 0.0), ("sample_local_spread", 4.001, 4.0), ("sample_local_neighbours", 1, 2),
    ("sample_local_neighbours", 257, 256),
    ("limit", 1, 2), ("threads", 0, 1), ("seed", -1, 0), ("seed", 2**63, 2**63 - 1),
    # 1e39 is finite as a float and infinite in float32: the first step went Inf, then a Cholesky error
    ("lr_g", 1.0001e6, 1e6), ("lr_z", 1e39, 1e6), ("imle_lr", 1.0001e6, 1e6),
]  # fmt: skip


@pytest.mark.parametrize(("field", "bad", "good"), CONFIG_BOUNDS, ids=lambda v: str(v))
def test_every_config_range_is_checked_at_its_bound(field, bad, good):
    TrainConfig(**{field: good}).validate()
    with pytest.raises(ConfigError, match=rf"config field {field} must be .+, got {re.escape(repr(bad))}$"):
        TrainConfig(**{field: bad}).validate()


@pytest.mark.parametrize("field", sorted(MAXIMA))
def test_every_config_maximum_is_allowed_and_anything_above_it_refused(field):
    most = MAXIMA[field]
    value = type(getattr(TrainConfig(), field) or 1)(most)  # threads defaults to None: an int field
    TrainConfig(**{field: value}).validate()
    shown = most if isinstance(most, int) else f"{most:g}"
    with pytest.raises(ConfigError, match=rf"config field {field} must be at most {shown}, got"):
        TrainConfig(**{field: value + 1}).validate()


@pytest.mark.parametrize("field", ["glo_epochs", "imle_epochs", "batch_size", "imle_batch_size", "seed"])
def test_an_integer_beyond_int64_is_refused_in_a_short_message(field):
    """Epoch counts and batch sizes beyond int64 crashed in the schedule or a tensor shape (10**19, 10**400:
    OverflowError); they are refused, and the message shows the start of the number and its length, not
    400 digits."""
    for bad in (10**19, 10**400):
        with pytest.raises(ConfigError, match=rf"config field {field} must be .+, got \d+") as err:
            TrainConfig(**{field: bad}).validate()
        assert len(str(err.value)) < 160, str(err.value)
    with pytest.raises(ConfigError, match=r"got 1{40}\.\.\. \(401 characters\)$"):
        TrainConfig(glo_epochs=int("1" * 401)).validate()


def test_config_checks_across_fields_types_and_devices():
    """Sizes the generator cannot make, adaptive IMLE with unique matching, a bool for an integer and a device
    other than cpu (cpu:0 is the same) or cuda are one-line ConfigErrors naming the field or the flag."""
    for size, why in ((30, r"s \* 2\*\*k with 3 <= s <= 7"), (1000, r"s \* 2\*\*k"), (7, "an integer >= 8")):
        with pytest.raises(ConfigError, match=rf"config field image_size: image_size must be {why}"):
            TrainConfig(image_size=size).validate()
    TrainConfig(image_size=96).validate()  # 3 * 2^5
    with pytest.raises(ConfigError, match="config field imle_adaptive needs imle_match 'nearest'"):
        TrainConfig(imle_adaptive=True, imle_match="unique").validate()
    TrainConfig(imle_adaptive=True).validate()
    for field in ("latent_dim", "glo_epochs", "seed"):
        with pytest.raises(ConfigError, match=rf"config field {field} must be an integer, got True \(bool\)"):
            TrainConfig(**{field: True}).validate()
    with pytest.raises(ConfigError, match=r"config field lr_g must be a number, got True \(bool\)"):
        TrainConfig(lr_g=True).validate()  # a bool is no number either (found by mutation testing)
    check_device("cpu")
    check_device("cpu:0")
    with pytest.raises(ConfigError, match=r"^device 'cpu:1': the CPU device takes no index \(use 'cpu'\)$"):
        check_device("cpu:1")
    for spec in ("meta", "mps"):
        with pytest.raises(
            ConfigError, match=rf"^device '{spec}': glann_ext trains on cpu or cuda, not {spec}$"
        ):
            check_device(spec)
    # a config's device is named as its field
    with pytest.raises(ConfigError, match=r"^config field device 'meta': glann_ext trains on cpu or cuda"):
        TrainConfig(device="meta").check_runnable()


def test_config_dicts_round_trip_with_tuples_and_a_v01_empty_extra():
    """from_dict makes both Adam beta lists (JSON has no tuples) tuples again, so a saved config equals the one
    it came from, and drops glann_ext 0.1's empty ``extra`` only (found by mutation testing)."""
    cfg = TrainConfig(betas=(0.6, 0.99), imle_betas=(0.8, 0.95))
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and isinstance(back.betas, tuple) and isinstance(back.imle_betas, tuple)
    assert TrainConfig.from_dict({**cfg.to_dict(), "extra": {}}) == cfg
    with pytest.raises(ConfigError, match=r"unknown config fields: \['extra'\]"):
        TrainConfig.from_dict({**cfg.to_dict(), "extra": {"a": 1}})


def test_imle_betas_set_the_mapping_adam_and_a_run_saved_without_them_keeps_the_shared_betas(
    tmp_path, blob_file
):
    assert TrainConfig().imle_betas == (0.9, 0.9) and TrainConfig().betas == (0.5, 0.999)
    # the presets keep the GLANN code's: measured no better at laptop's and laptop-30min's T (docs/training.md)
    assert all(preset(name).imle_betas == (0.5, 0.999) for name in ("laptop", "laptop-30min", "paper"))
    for bad, match in (
        ((0.9, 1.0), r"imle_betas must be each in \[0, 1\)"),
        ((0.9,), "imle_betas must be two"),
    ):
        with pytest.raises(ConfigError, match=match):
            TrainConfig(imle_betas=bad).validate()
    targets = torch.randn(16, 3)
    for space, expected in (("latent", (0.8, 0.95)), ("pixel", (0.5, 0.999))):  # pixel IMLE trains G
        cfg = TrainConfig(noise_dim=2, imle_space=space, imle_betas=(0.8, 0.95), ops=OPS)
        trainer = IMLETrainer(targets, MLP(2, 3, 8, 2), cfg, get_ops(OPS))
        assert trainer.opt.param_groups[0]["betas"] == expected, space

    # A GLO stage saved before imle_betas existed: its IMLE stage trains with the betas it shared then.
    out = tmp_path / "old"
    train(tiny_config(dataset=blob_file, glo_epochs=1), out, stage="glo", progress=False, log=lambda s: None)
    saved = json.loads((out / "config.json").read_text())
    del saved["imle_betas"]
    saved["betas"] = [0.6, 0.99]
    (out / "config.json").write_text(json.dumps(saved))
    main_pt = ckpt.checkpoint_dir(out) / ckpt.read_manifest(out)["step_dir"] / "main.pt"
    ckpt.save_atomic({**ckpt.load(main_pt), "config": saved}, main_pt)  # the checkpoint's copy, saved alike
    assert TrainConfig.from_json(out / "config.json").imle_betas == (0.9, 0.9)  # a file to start from
    assert load_run_config(out / "config.json").imle_betas == (0.6, 0.99)
    # A run saved under the earlier default (0.5, 0.999) keeps it: config.json holds every field.
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({**saved, "imle_betas": [0.5, 0.999]}))
    assert load_run_config(earlier).imle_betas == (0.5, 0.999)
    (tmp_path / "list.json").write_text("[0.6, 0.99]")
    for read in (TrainConfig.from_json, load_run_config):
        with pytest.raises(ConfigError, match="expected a JSON object of config fields, got list"):
            read(tmp_path / "list.json")
    train(None, out, stage="imle", progress=False, log=lambda s: None)
    assert ckpt.load_latest(out)["imle"]["opt"]["param_groups"][0]["betas"] == (0.6, 0.99)


def test_the_imle_stage_on_codes_steps_with_imle_batch_size_and_older_runs_keep_batch_size(blobs):
    targets = reference.project_to_sphere_reference(torch.randn(100, 3))
    seen = []

    class Recording(IMLETrainer):
        def train_step(self, batch):
            seen.append(len(batch))
            return super().train_step(batch)

    cfg = TrainConfig(noise_dim=2, batch_size=40, imle_batch_size=16, imle_precision_weight=0.5, ops=OPS)
    trainer = Recording(targets, MLP(2, 3, 8, 2), cfg, get_ops(OPS))
    assert trainer.batch_size == 16 and trainer.steps_per_epoch == 6  # 100 // 16; the remainder is dropped
    assert trainer.precision_noise(0).shape == (6, 16, 2)  # the precision term's fresh batch follows it
    run_epoch(trainer)
    assert seen == [16] * 6 and trainer.global_step == 6
    # pixel-space IMLE trains G, with G's batch; the GLO stage always uses batch_size
    pixel = IMLETrainer(targets, MLP(2, 3, 8, 2), TrainConfig(**{**cfg.to_dict(), "imle_space": "pixel"}),
                        get_ops(OPS))  # fmt: skip
    assert pixel.batch_size == 40 and pixel.steps_per_epoch == 2
    assert GLOTrainer(blobs, tiny_config(batch_size=40, imle_batch_size=16), get_ops(OPS)).batch_size == 40
    for bad in (1, 0, 2.0, True):
        with pytest.raises(ConfigError, match="imle_batch_size"):
            TrainConfig(imle_batch_size=bad).validate()
    # A run saved before the field existed stepped its IMLE stage with batch_size, and resumes so.
    legacy = {k: v for k, v in TrainConfig(batch_size=40).to_dict().items() if k != "imle_batch_size"}
    assert saved_config(legacy).imle_batch_size == 40
    assert TrainConfig.from_dict(legacy).imle_batch_size == TrainConfig().imle_batch_size == 32


def test_pixel_space_imle(tmp_path, blob_file):
    model = train(
        tiny_config(dataset=blob_file, imle_space="pixel", imle_epochs=2),
        tmp_path / "pix",
        progress=False,
        log=lambda s: None,
    )
    x = model.sample(5, seed=0)
    assert x.shape == (5, 1, 28, 28) and x.min() >= 0 and x.max() <= 1
    assert torch.equal(load_model(tmp_path / "pix").sample(5, seed=0), x)
    # read through its checkpoint (a run stopped before its model file): pixel IMLE has no codes to gather
    (tmp_path / "pix" / "model.safetensors").unlink()
    assert torch.equal(load_model(tmp_path / "pix").sample(5, seed=0), x)


def test_pixel_space_imle_regresses_with_the_configs_reconstruction_loss(blobs):
    # the paper's IMLE on images: matched samples pulled onto their images by the Laplacian pyramid loss
    # (plus the config's pixel L2), not the mean squared error of IMLE on codes
    cfg = tiny_config(imle_space="pixel", l2_weight=0.5)
    trainer = Fit(blobs, cfg).imle
    trainer.begin_epoch()
    batch = trainer.epoch_batches()[0]
    trainer.generator.train()
    with torch.no_grad():  # train mode: the step's own forward (BatchNorm on the batch) gives the same output
        out = trainer.generator(trainer.matched_noise[batch])
    ops, target = get_ops(OPS), blobs[batch]
    want = ops.lap_loss(out, target) + 0.5 * torch.nn.functional.mse_loss(out, target)
    assert trainer.train_step(batch) == pytest.approx(want.item(), rel=1e-5)


def _tight_mode_imle(epochs: int) -> TrainConfig:
    """The quality report's 2-D IMLE (seed 0): the options for tight modes at its Adam settings
    (docs/training.md), taken from the report so that the test checks the recipe the report runs."""
    from benchmarks.quality import toy_imle_config

    return dataclasses.replace(toy_imle_config(epochs, 0, tight=True), ops=OPS)


def test_imle_on_the_ring_covers_all_eight_modes(one_thread):
    """IMLE with the MLP generator on the ring of 8 (radius 1, std 0.01), with the options for tight modes
    (one-to-one matching, precision term, cosine learning rate; docs/training.md) at the quality report's Adam
    settings (lr 1e-2, betas (0.9, 0.9)): all 8 modes covered, more than 85% of 2,500 samples within 3 std of a
    centre, every mode at least 3% of the samples, and recall (every training point has a sample within 3 std).
    Here 92% and 7.5%; seeds 0-4 of the report give 90-93% within 3 std (70-77% at the earlier lr 3e-3, betas
    (0.9, 0.999)); plain IMLE gives 1-12% (tables in docs/studies.md, "The 2-D mixtures").
    """
    points = RING_PACGAN.sample(256, seed=0)
    trainer = fit_imle(points, seeded(0, lambda: MLP(2, 2, 128, 3, batch_norm=False)), _tight_mode_imle(1000))
    samples = trainer.generate(torch.randn(2500, 2, generator=torch.Generator().manual_seed(1)))
    cover = mode_coverage(samples, RING_PACGAN)
    counts, frac = cover.mode_counts, cover.high_quality_fraction
    assert frac > 0.85, (frac, counts)
    assert (counts >= 0.03 * 2500).all(), counts  # all 8 modes covered, none starved
    near = torch.cdist(
        points, trainer.generate(torch.randn(4000, 2, generator=torch.Generator().manual_seed(2)))
    )
    assert (near.min(1).values <= 0.03).float().mean() > 0.9


def test_imle_on_the_grid_reaches_95_percent_high_quality_in_5000_steps(one_thread):
    """The 5 x 5 grid (the issue's target: every mode, at least 95% of the samples within 3 std of a centre):
    the ring's options and settings for 5,000 steps. Seeds 0-4 of the study in docs/studies.md give
    96.6-97.0% and a smallest mode of 1.5-2.4% of the samples (uniform: 4%) on the AMD EPYCs; on an AVX-512
    Intel Xeon, where the sums round otherwise, seed 0 gave 96.6% with a smallest mode of 0.96%, and 96.3% with
    1.04% with torch held to AVX2 there (``ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2``; seeds 1-2:
    1.7-2.7% with either), so the floor has twice its value to spare on either instruction set. A starved mode
    (the paper's IMLE: 0.05%) still fails the 0.5% floor. About 30 s on one thread."""
    points = GRID_5X5.sample(256, seed=0)
    trainer = fit_imle(points, seeded(0, lambda: MLP(2, 2, 128, 3, batch_norm=False)), _tight_mode_imle(5000))
    cover = mode_coverage(
        trainer.generate(torch.randn(2500, 2, generator=torch.Generator().manual_seed(1))), GRID_5X5
    )
    assert cover.modes_covered == 25, cover.mode_counts
    assert cover.high_quality_fraction >= 0.95, (cover.high_quality_fraction, cover.mode_counts)
    assert (cover.mode_counts >= 0.005 * 2500).all(), cover.mode_counts


@pytest.mark.cuda
def test_cuda_run_with_autocast(tmp_path, blob_file):
    model = train(
        tiny_config(dataset=blob_file, device="cuda", amp=True),
        tmp_path / "gpu",
        progress=False,
        log=lambda s: None,
    )
    x = model.sample(4)
    assert x.is_cuda and x.dtype == torch.float32 and x.shape == (4, 1, 28, 28)


def _plain_nearest(trainer, epoch, which=None):
    """The matching of ``epoch`` recomputed from scratch with the float64 oracle (and rejection rule)."""
    noise = trainer.noise(range(trainer.num_noise), epoch)
    samples = trainer.generate(noise).double()
    targets = trainer.targets.double()
    if trainer.cfg.imle_reject_radius > 0:
        near = torch.cdist(samples, targets).min(1).values < trainer.cfg.imle_reject_radius
        samples[near] = 1e6
    queries = targets if which is None else targets[which]
    return reference.nn_argmin_exact(queries, samples)


def test_rs_imle_matches_only_draws_away_from_every_target():
    torch.manual_seed(0)
    targets = reference.project_to_sphere_reference(torch.randn(120, 5))
    cfg = TrainConfig(noise_dim=3, imle_noise_multiple=4, imle_reject_radius=0.35)
    trainer = IMLETrainer(targets, MLP(3, 5, 16, 2), cfg, get_ops(OPS))
    noise, idx, dist = trainer.match(epoch=0)
    assert torch.equal(idx, _plain_nearest(trainer, 0))
    outputs = trainer.generate(noise)
    chosen = outputs[idx]
    assert (torch.cdist(chosen, targets).min(1).values >= 0.35).all()  # no chosen draw sits on a target
    assert 0 < trainer.last_rejected < 1  # some draws were rejected, not all
    # the logged fraction is of all M = 480 draws (not of the 120 targets)
    near = torch.cdist(outputs.double(), targets.double()).min(1).values < 0.35
    assert trainer.last_rejected == int(near.sum()) / 480
    torch.testing.assert_close(dist, ((chosen - targets) ** 2).sum(1))
    with pytest.raises(ConfigError, match="imle_reject_radius"):
        TrainConfig(imle_reject_radius=-1.0).validate()


def test_rs_imle_stops_with_a_clear_error_when_it_rejects_every_draw():
    """Every draw rejected: all targets tied on the far point and were matched to draw 0, which the epoch then
    pulled onto every target, silently. Now the run stops, naming the field and the farthest draw."""
    torch.manual_seed(0)
    targets = reference.project_to_sphere_reference(torch.randn(40, 5))
    cfg = TrainConfig(noise_dim=3, imle_reject_radius=3.0)  # unit-sphere targets: every output within 3
    trainer = IMLETrainer(targets, MLP(3, 5, 16, 2), cfg, get_ops(OPS))
    outputs = trainer.generate(trainer.noise(range(trainer.num_noise), 0)).double()
    farthest = torch.cdist(outputs, targets.double()).min(1).values.max().item()
    assert farthest < 3.0
    with pytest.raises(ConfigError) as caught:
        trainer.match(epoch=0)
    assert caught.value.field == "imle_reject_radius"
    assert str(caught.value) == (
        f"config field imle_reject_radius (--imle-reject-radius) 3 rejects all 80 draws of IMLE epoch 1: every "
        f"output lies within it of a target (the farthest {farthest:.4g} away, in the matching space); resume "
        "with a smaller radius (a resume may change it)"
    )
    trainer.cfg = dataclasses.replace(cfg, imle_reject_radius=farthest * 0.999)  # one draw survives: no error
    _, idx, _ = trainer.match(epoch=0)
    assert len(idx.unique()) == 1 and trainer.last_rejected == 79 / 80


def test_rs_imle_with_unique_matching_matches_kept_draws_one_to_one():
    """Unique matching handed the targets left without a kept draw the parked rejected ones, and the epoch
    pulled those (match distance 1e13): now it matches over the kept draws, and stops when they are too few."""
    torch.manual_seed(0)
    targets = reference.project_to_sphere_reference(torch.randn(60, 4))
    cfg = TrainConfig(noise_dim=3, imle_match="unique", imle_noise_multiple=4)
    trainer = IMLETrainer(targets, MLP(3, 4, 16, 2), cfg, get_ops(OPS))
    outputs = trainer.generate(trainer.noise(range(trainer.num_noise), 0))
    nearest = torch.cdist(outputs.double(), targets.double()).min(1).values
    trainer.cfg = cfg = dataclasses.replace(cfg, imle_reject_radius=nearest.median().item())
    kept = (nearest >= cfg.imle_reject_radius).nonzero().squeeze(1)
    assert 60 <= len(kept) < 240  # some draws rejected, enough left
    _, idx, dist = trainer.match(epoch=0)
    assert torch.equal(idx, kept[_unique_match_literal(targets, outputs[kept])])
    torch.testing.assert_close(dist, ((outputs[idx] - targets) ** 2).sum(1))
    assert dist.max() < 16  # no parked draw among them
    # a radius that keeps fewer draws than targets: one line, naming the counts and the way out
    ranked = nearest.sort(descending=True).values
    radius = (ranked[58] + ranked[59]).item() / 2  # keeps the 59 draws farther than this from every target
    trainer.cfg = dataclasses.replace(cfg, imle_reject_radius=radius)
    survivors = int((ranked >= radius).sum())
    assert survivors == 59
    with pytest.raises(ConfigError) as caught:
        trainer.match(epoch=0)
    assert caught.value.field == "imle_reject_radius"
    assert str(caught.value) == (
        f"config field imle_reject_radius (--imle-reject-radius) {radius:g} leaves {survivors} of the 240 draws "
        "of IMLE epoch 1, fewer than the 60 targets that imle_match 'unique' matches one to one; resume with a "
        "smaller radius (a resume may change it)"
    )


def test_a_run_whose_radius_rejects_every_draw_resumes_with_a_smaller_one(tmp_path, blob_file):
    """The error said to lower the radius, which a resume refused to change: the run could only start over.
    The radius is a recovery field like the rates: the resume continues from the last checkpoint with it,
    and resumes.jsonl records the change."""
    out = tmp_path / "rs"
    cfg = tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=2, imle_reject_radius=100.0)
    with pytest.raises(
        ConfigError, match=r"imle_reject_radius \(--imle-reject-radius\) 100 rejects all .* epoch 1"
    ):
        train(cfg, out, progress=False, log=lambda s: None)
    train(dataclasses.replace(cfg, imle_reject_radius=0.05), out, progress=False, log=lambda s: None)
    changed = json.loads((out / "resumes.jsonl").read_text().splitlines()[-1])["changed"]
    assert changed == {"imle_reject_radius": [100.0, 0.05]}
    rows = _rows(out)
    assert [r["epoch"] for r in rows if r["stage"] == "imle"] == [1, 2]
    assert all(r["rejected"] < 1 for r in rows if r["stage"] == "imle")


def test_adaptive_rs_imle_draws_nothing_in_an_epoch_that_re_matches_no_target():
    """With both variants on, an epoch in which no target was due for a new match still drew and rejected
    M draws, and a radius that rejected them all stopped the run though nothing was to be matched."""
    torch.manual_seed(0)
    targets = reference.project_to_sphere_reference(torch.randn(60, 4))
    cfg = TrainConfig(
        noise_dim=3, batch_size=30, imle_adaptive=True, imle_staleness=3, imle_reject_radius=0.01
    )
    trainer = IMLETrainer(targets, MLP(3, 4, 16, 2), cfg, get_ops(OPS))
    run_epoch(trainer)  # the first epoch matches everyone
    assert trainer.last_rematched == 1.0
    kept = trainer.matched_noise.clone()
    trainer.cfg = dataclasses.replace(cfg, imle_reject_radius=100.0)  # would reject every draw
    run_epoch(trainer)  # staleness 3: nobody is due
    assert trainer.last_rematched == 0.0 and trainer.last_rejected == 0.0
    assert torch.equal(trainer.matched_noise, kept)


def test_adaptive_imle_keeps_matches_until_a_target_is_fitted():
    torch.manual_seed(0)
    targets = reference.project_to_sphere_reference(torch.randn(90, 4))
    cfg = TrainConfig(noise_dim=3, batch_size=30, imle_adaptive=True, imle_staleness=1, imle_force_rematch=3)
    trainer = IMLETrainer(targets, MLP(3, 4, 16, 2), cfg, get_ops(OPS))
    first = _plain_nearest(trainer, 0)  # epoch 0's matching, before T has stepped
    first_dist = ((trainer.generate(trainer.noise(first, 0)).double() - targets.double()) ** 2).sum(1)
    run_epoch(trainer)  # the first epoch matches every target
    # each threshold is (1 - gamma) x the target's distance when it was matched (the paper's shrink)
    assert torch.allclose(trainer.threshold.double(), first_dist * (1 - cfg.imle_adaptive_shrink), rtol=1e-5)
    assert trainer.last_match_distance == pytest.approx(first_dist.mean().item(), rel=1e-5)
    assert trainer.last_rematched == 1.0 and torch.equal(
        trainer.since_match, torch.zeros(90, dtype=torch.int64)
    )
    kept, threshold = trainer.matched_noise.clone(), trainer.threshold.clone()
    current = ((trainer.generate(kept) - targets) ** 2).sum(1)
    fitted = current < threshold
    assert 0 < int(fitted.sum()) < 90
    new = _plain_nearest(trainer, 1, fitted.nonzero().squeeze(1))  # G as epoch 1 will match with it
    run_epoch(trainer)
    rematched = trainer.since_match == 0
    assert torch.equal(rematched, fitted)  # exactly the fitted targets were matched anew (staleness 1)
    assert torch.equal(trainer.matched_noise[~rematched], kept[~rematched])  # the others kept theirs
    assert torch.equal(trainer.matched_noise[rematched], trainer.noise(new, 1))
    # a fitted target's new bar is (1 - gamma) x the distance its sample had reached (the paper's code), so it
    # only falls; it came from the fresh match's distance, which loosened 21% of the bars in a review's run
    shrink = 1 - cfg.imle_adaptive_shrink
    torch.testing.assert_close(trainer.threshold[fitted], current[fitted] * shrink, rtol=1e-5, atol=0)
    assert (trainer.threshold[fitted] < threshold[fitted]).all()
    assert torch.equal(trainer.threshold[~fitted], threshold[~fitted])
    for _ in range(3):
        before = trainer.threshold.clone()
        reached = ((trainer.generate(trainer.matched_noise) - targets) ** 2).sum(1)
        run_epoch(trainer)
        again = trainer.since_match == 0
        torch.testing.assert_close(trainer.threshold[again], reached[again] * shrink, rtol=1e-5, atol=0)
        assert torch.equal(trainer.threshold[~again], before[~again])
    assert (trainer.since_match < 3).all()  # nobody keeps a match past imle_force_rematch
    assert trainer.threshold.min() >= 0
    with pytest.raises(ConfigError, match="imle_adaptive needs imle_match"):
        TrainConfig(imle_adaptive=True, imle_match="unique").validate()


@pytest.mark.parametrize(
    "options", [{"imle_adaptive": True}, {"imle_reject_radius": 0.2}], ids=["adaptive", "rs"]
)
def test_imle_variants_resume_bit_identically(tmp_path, blob_file, options):
    cfg = {"dataset": blob_file, "glo_epochs": 2, "imle_epochs": 4, "ckpt_every": 2, "imle_force_rematch": 2,
           "glo_lr_schedule": "cosine", "gen_depth": 1, **options}  # fmt: skip
    straight = tmp_path / "straight"
    train(tiny_config(**cfg), straight, progress=False, log=lambda s: None)
    broken = tmp_path / "broken"
    with pytest.raises(Interrupt):
        train(tiny_config(**cfg), broken, progress=False, on_step=interrupt_at("imle", 8), log=lambda s: None)
    train(None, broken, progress=False, log=lambda s: None)
    a, b = ckpt.load_latest(straight), ckpt.load_latest(broken)
    assert tensors_equal(a["glo"], b["glo"]) and tensors_equal(a["imle"], b["imle"])
    rows = _rows(straight)
    key = "rematched" if "imle_adaptive" in options else "rejected"
    assert all(key in r for r in rows if r["stage"] == "imle")
    resumed = _rows(broken)
    measures = [
        [(r["epoch"], r[key], r["match_distance"]) for r in rs if r["stage"] == "imle"]
        for rs in (rows, resumed)
    ]
    assert measures[0] == measures[1] and all(math.isfinite(m[2]) for m in measures[0])


@pytest.mark.parametrize("ckpt_every", [0, 1])
def test_a_diverged_stage_stops_before_saving_and_resumes_with_a_lower_rate(tmp_path, blob_file, ckpt_every):
    """A rate far too high made the IMLE loss NaN/inf; the run checkpointed the NaN state over the last good
    one (older steps deleted) and failed later in a kernel's NaN check, and a lower rate was refused on
    resume. Now the stage stops at the step (DivergedError, naming the rate's flag) with nothing non-finite
    saved, and a resume may lower the rate (recorded in resumes.jsonl). Which non-finite value is seen first
    depends on the CPU's rounding: on a 2-core Zen 1 EPYC (AVX2), Adam's second moment overflowed while the
    loss was still finite, and the checkpoint's check stopped the stage."""
    out = tmp_path / "nan"
    cfg = tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=2, imle_lr=1e6, ckpt_every=ckpt_every)
    logged: list[str] = []
    with pytest.raises(
        DivergedError,
        match=r"^the IMLE stage diverged: (the loss is (nan|inf)|state\.imle\.\S+ holds NaN or Inf) at epoch "
        r".*--imle-lr",
    ):
        train(cfg, out, progress=False, log=logged.append)
    manifest = ckpt.read_manifest(out)
    state = torch.load(ckpt.checkpoint_dir(out) / manifest["step_dir"] / "main.pt", weights_only=True)
    tensors = [t for t in _tensors(state) if t.is_floating_point()]
    assert tensors and all(bool(torch.isfinite(t).all()) for t in tensors)
    rows = _rows(out)
    assert all(math.isfinite(r["loss"]) for r in rows)
    train(dataclasses.replace(cfg, imle_lr=1e-3), tmp_path / "fresh", progress=False, log=lambda s: None)
    assert json.loads((out / "config.json").read_text())["imle_lr"] == 1e6
    with pytest.raises(DivergedError):  # the same rate diverges again, deterministically
        train(cfg, out, progress=False, log=lambda s: None)
    with contextlib.suppress(DivergedError):  # a lower rate is taken (from what diverging left, it may still)
        train(dataclasses.replace(cfg, imle_lr=1e-6), out, progress=False, log=lambda s: None)
    changed = json.loads((out / "resumes.jsonl").read_text().splitlines()[-1])["changed"]
    assert changed == {"imle_lr": [1e6, 1e-6]}


def test_a_resume_mid_glo_trains_on_the_rates_it_changes(tmp_path, blob_file):
    """``--lr-g``/``--lr-z`` on a resume mid-GLO were recorded (resumes.jsonl, config.json) but not used: the
    optimizers' saved states brought back the old rates, so a diverged run resumed at a lower rate diverged
    again (found by a resume audit). The rates a resume sets are the ones its steps use."""
    out, cfg = _interrupted(tmp_path, blob_file, "glo", 2)
    same = tmp_path / "same"
    shutil.copytree(out, same)
    faster = dataclasses.replace(cfg, lr_g=cfg.lr_g * 2, lr_z=cfg.lr_z * 2)
    train(faster, out, progress=False, log=lambda s: None)
    train(cfg, same, progress=False, log=lambda s: None)
    changed = json.loads((out / "resumes.jsonl").read_text().splitlines()[-1])["changed"]
    assert changed == {"lr_g": [cfg.lr_g, faster.lr_g], "lr_z": [cfg.lr_z, faster.lr_z]}
    a, b = ckpt.load_latest(out)["glo"], ckpt.load_latest(same)["glo"]
    assert a["opt_g"]["param_groups"][0]["lr"] == faster.lr_g and a["opt_z"]["lr"] == faster.lr_z
    assert not torch.equal(a["codes"], b["codes"]) and not tensors_equal(a["G"], b["G"])


def _tensors(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for v in state.values():
            yield from _tensors(v)
    elif isinstance(state, (list, tuple)):
        for v in state:
            yield from _tensors(v)


def _interrupted(tmp_path, blob_file, stage: str, step: int, name: str = "run", **over):
    out = tmp_path / name
    cfg = tiny_config(dataset=blob_file, glo_epochs=2, imle_epochs=1, ckpt_every=1, **over)
    with pytest.raises(Interrupt):
        train(cfg, out, progress=False, on_step=interrupt_at(stage, step), log=lambda s: None)
    return out, cfg


def test_each_checkpoint_step_replaces_the_one_before(tmp_path, blob_file):
    # ckpt_every 1 writes a step per optimizer step; older steps are deleted once the manifest names the new
    # one, so a long run keeps one step on disk, not thousands
    out, _ = _interrupted(tmp_path, blob_file, "glo", 3)
    steps = sorted(p.name for p in ckpt.checkpoint_dir(out).glob("step-*"))
    manifest = ckpt.read_manifest(out)
    assert manifest["seq"] >= 1 and steps == [manifest["step_dir"]]


def test_a_resume_is_checked_against_the_checkpoints_own_config(tmp_path, blob_file):
    out, cfg = _interrupted(tmp_path, blob_file, "glo", 2)
    quiet = {"progress": False, "log": lambda s: None}
    (out / "config.json").unlink()  # deleted: the checkpoint's copy still names the run's settings
    with pytest.raises(RunFolderError, match=r"another config \(batch_size 32 -> 16\)"):
        train(dataclasses.replace(cfg, batch_size=16), out, **quiet)
    saved = cfg.to_dict()
    (out / "config.json").write_text(json.dumps({**saved, "seed": 7}))  # edited
    with pytest.raises(RunFolderError, match=r"another config \(seed 0 -> 7\)"):
        train(None, out, **quiet)
    (out / "config.json").unlink()
    train(dataclasses.replace(cfg, imle_epochs=2), out, **quiet)  # same settings: resumes, config.json back
    assert load_run_config(out / "config.json").imle_epochs == 2
    assert json.loads((out / "resumes.jsonl").read_text())["changed"] == {"imle_epochs": [1, 2]}
    # a job that resolved its config before another job trained the folder refuses under the lock
    late = Run(tmp_path / "race", dataclasses.replace(cfg, seed=9), progress=False, log=lambda s: None)
    train(cfg, tmp_path / "race", stage="glo", **quiet)
    with pytest.raises(
        RunFolderError,
        match=r"holds a run with a different config \(seed 0 -> 9; the run.s, then this command.s\)",
    ):
        late.train()


def test_a_resume_may_name_the_image_size_and_channels_the_data_gave(tmp_path, blob_file):
    """A run that left image_size / channels to the data (an array's own 28 x 28, one channel) resumes when
    they are named as the data gave them (None -> 28 was refused as a change), exactly as if not named;
    another size or channel count is refused before anything is written, and once named they are fixed."""
    quiet = {"progress": False, "log": lambda s: None}
    out, cfg = _interrupted(tmp_path, blob_file, "glo", 2)
    assert (cfg.image_size, cfg.channels) == (None, None)
    for other, seen in (
        (
            {"image_size": 32},
            r"1 x 28 x 28, and this resume loads them at 1 x 32 x 32 \(image_size none -> 32\)",
        ),
        ({"channels": 3}, r"1 x 28 x 28, and this resume loads them at 3 x 28 x 28 \(channels none -> 3\)"),
    ):
        with pytest.raises(ConfigError, match=seen):
            train(dataclasses.replace(cfg, **other), out, **quiet)
    assert not (out / "resumes.jsonl").exists() and load_run_config(out / "config.json").image_size is None
    lines: list[str] = []  # the resume's line spells None as the command line does (it said "None -> 28")
    resumed = train(
        dataclasses.replace(cfg, image_size=28, channels=1), out, progress=False, log=lines.append
    )
    assert "resuming with image_size none -> 28, channels none -> 1 (recorded" in "\n".join(lines)
    whole = train(cfg, tmp_path / "whole", **quiet)
    assert tensors_equal(resumed.state_dict(), whole.state_dict())
    assert json.loads((out / "resumes.jsonl").read_text())["changed"] == {
        "image_size": [None, 28],
        "channels": [None, 1],
    }
    with pytest.raises(RunFolderError, match=r"different config \(image_size 28 -> 32;"):
        train(dataclasses.replace(cfg, image_size=32, channels=1), out, **quiet)
    # back to None (the data's own) is the same images too; only the shape fields are named in a refusal
    train(dataclasses.replace(cfg, imle_epochs=2), out, **quiet)
    with pytest.raises(ConfigError, match=r"at 3 x 28 x 28 \(channels none -> 3\); resume without"):
        train(dataclasses.replace(cfg, imle_epochs=3, channels=3), out, **quiet)
    saved = (out / "config.json").read_bytes()
    (out / "config.json").unlink()  # the checkpoint's copy then says what the resume changes
    with pytest.raises(ConfigError, match=r"at 1 x 32 x 32 \(image_size none -> 32\); resume without"):
        train(dataclasses.replace(cfg, imle_epochs=3, image_size=32), out, **quiet)
    (out / "config.json").write_bytes(saved)
    shutil.rmtree(ckpt.checkpoint_dir(out))  # the model file only: it would retrain at the named shape
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(
        ConfigError, match=r"no checkpoint records the image shape .* \(image_size none -> 28\)"
    ):
        train(dataclasses.replace(cfg, imle_epochs=2, image_size=28), out, **quiet)
    assert (out / "model.safetensors").read_bytes() == before


def test_a_resume_cannot_change_epochs_already_trained_or_glo_once_imle_began(tmp_path, blob_file):
    quiet = {"progress": False, "log": lambda s: None}
    out, cfg = _interrupted(tmp_path, blob_file, "imle", 1)
    with pytest.raises(
        ConfigError,
        match=r"^config field glo_epochs \(--glo-epochs\) 5: the GLO stage .* finished after 2 epochs",
    ):
        train(dataclasses.replace(cfg, glo_epochs=5), out, **quiet)
    assert not (out / "resumes.jsonl").exists()
    steps = seeding.num_batches(96, cfg.batch_size)  # per GLO epoch
    out, cfg = _interrupted(tmp_path, blob_file, "glo", steps + 1, name="glo")  # in GLO epoch 2
    with pytest.raises(
        ConfigError,
        match=r"^config field glo_epochs \(--glo-epochs\) 0: .* has trained 1 GLO epochs already; give at least 1",
    ):
        train(dataclasses.replace(cfg, glo_epochs=0), out, **quiet)
    train(dataclasses.replace(cfg, glo_epochs=3), out, stage="glo", **quiet)  # extending GLO in GLO: fine
    assert ckpt.latest_main(out)["glo"]["epoch"] == 3


def test_a_finished_glo_stage_takes_another_t_until_imle_begins(tmp_path, blob_file):
    """Every IMLE-stage field was frozen once GLO had trained, so trying the mixing `T` on a finished
    `--stage glo` meant training GLO again. Before IMLE begins they may change (recorded), and the run trains
    what a new run with them trains; once IMLE has begun they are refused again, and RS-IMLE's radius may
    then only go down."""
    quiet = {"progress": False, "log": lambda s: None}
    cfg = tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=2)
    other = {"mapping_layers": 1, "mapping_batch_norm": False, "noise_dim": 3, "imle_reject_radius": 0.5}
    out = tmp_path / "glo"
    train(cfg, out, stage="glo", **quiet)
    model = train(dataclasses.replace(cfg, **other), out, **quiet)
    fresh = train(dataclasses.replace(cfg, **other), tmp_path / "fresh", **quiet)
    assert tensors_equal(model.export()[0], fresh.export()[0])
    changed = json.loads((out / "resumes.jsonl").read_text())["changed"]
    assert changed == {k: [getattr(cfg, k), v] for k, v in other.items()}
    later = dataclasses.replace(cfg, **other, imle_epochs=3)
    with pytest.raises(RunFolderError, match=r"different config \(mapping_layers 1 -> 2;"):
        train(dataclasses.replace(later, mapping_layers=2), out, **quiet)
    with pytest.raises(
        RunFolderError, match=r"\(imle_reject_radius 0.5 -> 0.6;.*; RS-IMLE's radius may only be lowered"
    ):
        train(dataclasses.replace(later, imle_reject_radius=0.6), out, **quiet)
    train(dataclasses.replace(later, imle_reject_radius=0.0), out, **quiet)  # down (off): allowed
    assert json.loads((out / "resumes.jsonl").read_text().splitlines()[-1])["changed"] == {
        "imle_epochs": [2, 3],
        "imle_reject_radius": [0.5, 0.0],
    }


def test_a_relative_vgg_path_of_an_older_run_resumes_under_its_absolute_spelling(tmp_path, monkeypatch):
    """0.3.4 saves --vgg-weights absolute; rerunning the command that started a 0.3.3 run (saved relative)
    was refused as a change of vgg_weights, though it names the same file."""
    from glann_ext.train.run import RECORDED_FIELDS, _may_change

    monkeypatch.chdir(tmp_path)
    (tmp_path / "vgg.pt").write_bytes(b"")
    (tmp_path / "other.pt").write_bytes(b"")
    assert _may_change("vgg_weights", "vgg.pt", str(tmp_path / "vgg.pt"), "imle")
    assert not _may_change("vgg_weights", "vgg.pt", str(tmp_path / "other.pt"), "imle")
    assert not _may_change("vgg_weights", None, str(tmp_path / "vgg.pt"), "imle")  # the loss switched on
    assert "vgg_weights" in RECORDED_FIELDS  # the absolute spelling is saved and recorded


def test_a_resume_refuses_a_vgg_weights_file_changed_since_the_run_trained_with_it(tmp_path, blob_file):
    """The perceptual loss reads its weights file anew on every resume: a file changed in place resumed the
    run under other weights, silently. main.pt records the file's SHA-256, and a resume compares."""
    from glann_testing import vgg_state

    quiet = {"progress": False, "log": lambda s: None}
    weights = tmp_path / "vgg.pt"
    torch.save(vgg_state(0), weights)
    out = tmp_path / "run"
    cfg = tiny_config(
        dataset=blob_file, glo_epochs=1, imle_epochs=1, vgg_weights=str(weights), vgg_weight=0.1
    )
    train(cfg, out, **quiet)
    assert ckpt.latest_main(out)[ckpt.VGG_DIGEST_KEY] == hashlib.sha256(weights.read_bytes()).hexdigest()
    longer = dataclasses.replace(cfg, imle_epochs=2)
    torch.save(vgg_state(1), weights)
    with pytest.raises(
        CheckpointError, match=r"vgg.pt: the VGG weights file has changed since .* trained with it"
    ):
        train(longer, out, **quiet)
    torch.save(vgg_state(0), weights)  # the same weights again: the resume goes on
    train(longer, out, **quiet)
    assert ckpt.latest_main(out)["imle"]["epoch"] == 2
    # pixel IMLE's loss is its IMLE trainer's (no GLO stage): its run records the same digest
    pixel = dataclasses.replace(cfg, imle_space="pixel", glo_epochs=0)
    train(pixel, tmp_path / "pixel", **quiet)
    assert (
        ckpt.latest_main(tmp_path / "pixel")[ckpt.VGG_DIGEST_KEY]
        == hashlib.sha256(weights.read_bytes()).hexdigest()
    )


def test_readers_say_when_the_model_file_is_behind_a_stopped_resume(tmp_path, blob_file):
    """A resume that added IMLE epochs and was stopped left `sample`, `eval` and `invert` reading the earlier
    model.safetensors without a word, while config.json and the checkpoint were further on."""
    from glann_ext.train.run import model_file_behind

    quiet = {"progress": False, "log": lambda s: None}
    out = tmp_path / "run"
    cfg = tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=1, ckpt_every=1)
    train(dataclasses.replace(cfg, imle_epochs=0), out, stage="glo", **quiet)  # GLO only: no T in the file
    assert model_file_behind(out, load_model(out)) is None
    with pytest.raises(Interrupt):
        train(cfg, out, on_step=interrupt_at("imle", 1), **quiet)  # IMLE begun, epochs as the file's
    assert load_model(out).T is None and ckpt.read_manifest(out)["phase"] == "imle"
    assert model_file_behind(out, load_model(out)) == (
        f"{out / 'model.safetensors'} is the model trained to GLO epoch 1; the run's latest checkpoint has done 0 "
        "of its 1 IMLE epochs, and maybe part of the next (a resume stopped or still training): `glann train "
        f"--out {out}` finishes it"
    )
    train(cfg, out, **quiet)
    assert model_file_behind(out, load_model(out)) is None  # finished: the file is the run's
    with pytest.raises(Interrupt):
        train(dataclasses.replace(cfg, imle_epochs=3), out, on_step=interrupt_at("imle", 5), **quiet)
    note = model_file_behind(out, load_model(out))
    assert note is not None and "trained to IMLE epoch 1; the run's latest checkpoint has done " in note
    assert "of its 3 IMLE epochs, and maybe part of the next (a resume stopped or still training)" in note
    assert model_file_behind(out / "model.safetensors", load_model(out)) is None  # a model file: no run
    (ckpt.checkpoint_dir(out) / ckpt.MANIFEST_FILE).write_text("[")  # damaged: the reader reads the file
    assert model_file_behind(out, load_model(out)) is None


@pytest.mark.parametrize("split", [50, 51])  # 51: a shown row at rank 1's first row, shown by rank 1 alone
def test_the_reconstruction_grid_spreads_over_the_whole_dataset_whatever_the_shards(split):
    """Under torchrun the grids showed rank 0's shard only (rows 0-299 of 600: on class-sorted folders one
    class; a review), and one row of 32 pairs was 2,114 pixels wide at 64 x 64. Each rank now gives the shown
    rows it holds: two shards make the single process's grid, rows of 16 originals above their
    reconstructions."""
    from glann_ext.images import PAIR_COLUMNS
    from glann_ext.train.run import shown_rows

    class TwoRanks:  # world.gather of rank ``rank``, rank 1's value handed in
        def __init__(self, rank, theirs=None):
            self.rank, self.is_main, self.theirs, self.given = rank, rank == 0, theirs, None

        def gather(self, value):
            self.given = value
            return [value, self.theirs] if self.rank == 0 else [self.theirs, value]

    images = torch.arange(100.0).view(100, 1, 1, 1).expand(100, 1, 4, 4).contiguous()
    halve = lambda data: lambda rows: data[rows] / 2  # noqa: E731  (a "G" that marks its images)
    whole, cols = reconstruction_grid(World(), images, 0, 100, halve(images))  # one process
    assert 51 in shown_rows(100).tolist()
    rank1 = TwoRanks(1)
    assert reconstruction_grid(rank1, images[split:], split, 100, halve(images[split:])) is None
    sharded, cols2 = reconstruction_grid(
        TwoRanks(0, rank1.given), images[:split], 0, 100, halve(images[:split])
    )
    assert torch.equal(whole, sharded) and cols == cols2 == PAIR_COLUMNS
    shown = images[shown_rows(100)][:, 0, 0, 0]
    assert len(shown) == 32 and shown[-1] == 99  # spread over both shards, last row included
    grid = whole.view(-1, PAIR_COLUMNS, 1, 4, 4)[:, :, 0, 0, 0]  # rows of the grid, pixel [0, 0] each
    assert torch.equal(grid[0::2].flatten(), shown) and torch.equal(grid[1::2].flatten(), shown / 2)


def test_readers_say_when_they_read_the_checkpoint_of_an_unfinished_first_training(tmp_path, blob_file):
    """Before a run's first model file exists, readers load its latest checkpoint: they did so without a
    word, and eval.json did not say which model it measured (a review: an eval early in IMLE left FD 127 in
    the finished run's folder, whose model scores 113). They say which checkpoint now; a final checkpoint
    (a model file deleted) needs no note."""
    from glann_ext.evaluate import _Job, evaluate_run, format_table
    from glann_ext.train.run import model_file_behind

    quiet = {"progress": False, "log": lambda s: None}
    out = tmp_path / "run"
    cfg = tiny_config(dataset=blob_file, glo_epochs=2, imle_epochs=2, ckpt_every=1)
    steps = seeding.num_batches(96, cfg.batch_size)
    with pytest.raises(Interrupt):
        train(cfg, out, on_step=interrupt_at("glo", steps + 1), **quiet)
    model = load_model(out)
    assert model.from_checkpoint == {"phase": "glo", "epoch": 1, "global_step": steps + 1}
    assert model_file_behind(out, model) == (
        f"{out} has no model.safetensors yet: this is the model of its latest checkpoint, GLO epoch 1 of 2 "
        f"done (step {steps + 1}), of a training still running or stopped; `glann train --out {out}` finishes it"
    )
    notes = []
    res = evaluate_run(out, n=8, out=tmp_path / "ev", sampler="gaussian", progress=False, log=notes.append)
    assert res["checkpoint"] == {"phase": "glo", "epoch": 1, "global_step": steps + 1}
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["checkpoint"] == res["checkpoint"]
    assert f"its checkpoint at GLO epoch 1, step {steps + 1}" in format_table(res)
    assert any("has no model.safetensors yet" in line for line in notes)
    with pytest.raises(Interrupt):
        train(cfg, out, on_step=interrupt_at("imle", 1), **quiet)
    assert "IMLE epoch 0 of 2 done (step 1)" in model_file_behind(out, load_model(out))
    train(cfg, out, **quiet)
    finished = load_model(out)  # the model file: no mark, no note
    assert getattr(finished, "from_checkpoint", None) is None and model_file_behind(out, finished) is None
    assert _Job(out, finished, cfg, 4, 0, "glann", tmp_path, 4, False, print).header()["checkpoint"] is None
    (out / "model.safetensors").unlink()  # the final checkpoint stands in for it: the same model, no note
    final = load_model(out)
    assert final.from_checkpoint["phase"] == "imle" and model_file_behind(out, final) is None


def test_a_resume_may_end_a_stage_at_the_epochs_it_has_trained(tmp_path, blob_file):
    """--glo-epochs equal to the GLO epochs already trained ends the stage there ("give at least 1" accepts
    1), recorded as a resume's change."""
    steps = seeding.num_batches(96, tiny_config().batch_size)  # per GLO epoch
    out, cfg = _interrupted(tmp_path, blob_file, "glo", steps + 1)  # in GLO epoch 2 of 2
    train(dataclasses.replace(cfg, glo_epochs=1), out, stage="glo", progress=False, log=lambda s: None)
    assert ckpt.latest_main(out)["glo"]["epoch"] == 1
    assert json.loads((out / "resumes.jsonl").read_text())["changed"] == {"glo_epochs": [2, 1]}


def test_a_job_that_started_before_another_trained_its_folder_resumes_it(tmp_path, blob_file):
    """A job resolves its config (here a new run's) before it takes the folder's lock; if another job trained
    the folder meanwhile, it is resolved again under the lock: a change only of fields a resume may change is
    that resume's, recorded in config.json and resumes.jsonl like any other (config.json said 1 IMLE epoch
    for a run that trained 2)."""
    quiet = {"progress": False, "log": lambda s: None}
    cfg = tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=1)
    late = Run(tmp_path / "race", dataclasses.replace(cfg, imle_epochs=2), **quiet)
    train(cfg, tmp_path / "race", stage="glo", **quiet)
    late.train()
    assert load_run_config(tmp_path / "race" / "config.json").imle_epochs == 2
    (entry,) = [json.loads(x) for x in (tmp_path / "race" / "resumes.jsonl").read_text().splitlines()]
    assert entry["changed"] == {"imle_epochs": [1, 2]}


def test_a_resume_drops_the_metrics_rows_its_checkpoint_has_not_reached_and_torn_lines(tmp_path, blob_file):
    """A kill between an epoch's metrics row and its checkpoint, or in the middle of a row: the resume redoes
    the epoch and keeps one row of each epoch, with a torn or foreign line dropped rather than kept."""
    steps = seeding.num_batches(96, tiny_config().batch_size)  # per GLO epoch
    out, _ = _interrupted(tmp_path, blob_file, "glo", steps + 1)  # in GLO epoch 2 of 2
    with (out / "metrics.jsonl").open("a") as f:
        f.write(
            json.dumps({"stage": "glo", "epoch": 2, "loss": 0.0}) + "\nnot json\n" + '{"stage": "glo", "ep'
        )
    train(None, out, progress=False, log=lambda s: None)
    rows = _rows(out)
    assert [(r["stage"], r["epoch"]) for r in rows] == [("glo", 1), ("glo", 2), ("imle", 1)]
    assert rows[1]["loss"] != 0.0


def test_grids_every_sample_every_epochs_and_after_each_stages_last(tmp_path, blob_file):
    """sample_every 2 with 3 GLO epochs and 1 IMLE epoch: grids after GLO epochs 2 and 3 (the last) and after
    IMLE epoch 1 (the last), then the finished model's."""
    cfg = tiny_config(dataset=blob_file, glo_epochs=3, imle_epochs=1, sample_every=2)
    train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    assert sorted(p.name for p in (tmp_path / "run" / "images").iterdir()) == [
        "reconstructions_glo_002.png", "reconstructions_glo_003.png", "samples_gaussian_002.png",
        "samples_gaussian_003.png", "samples_imle_001.png",
    ]  # fmt: skip
    assert all((tmp_path / "run" / name).is_file() for name in ("samples.png", "reconstructions.png"))


def test_reconstruction_grids_show_rows_spread_over_the_dataset():
    """The first 32 rows of a class-subfolder dataset (sorted by path) were one class only."""
    from glann_ext.train.run import N_SHOW, shown_rows

    rows = shown_rows(1000)
    assert len(rows) == N_SHOW and rows[0] == 0 and rows[-1] == 999 and bool((rows.diff() >= 31).all())
    assert torch.equal(shown_rows(20), torch.arange(20)) and torch.equal(
        shown_rows(N_SHOW), torch.arange(N_SHOW)
    )
    assert len(shown_rows(N_SHOW + 1)) == N_SHOW and len(shown_rows(0)) == 0


# Found missing by a mutation test of sampling, eval and the config (2026-12-07).


def test_a_saved_config_without_the_newer_fields_keeps_what_its_run_did():
    from glann_ext.train.config import TrainConfig

    old = TrainConfig().to_dict()
    for name in (
        "sample_local_spread",
        "imle_whiten",
        "sample_noise_scale",
        "balance_draws",
        "imle_lr_schedule",
    ):
        del old[name]
    cfg = saved_config(old)
    assert cfg.sample_local_spread == 0.0  # T's samples as they were before the local spread
    assert cfg.imle_whiten is False  # IMLE on the raw codes
    assert cfg.sample_noise_scale == 1.0 and cfg.balance_draws == 0.0 and cfg.imle_lr_schedule == "constant"
    # a save that has the fields keeps them
    kept = saved_config(TrainConfig(sample_local_spread=0.25, imle_whiten=True).to_dict())
    assert kept.sample_local_spread == 0.25 and kept.imle_whiten is True


# Mutation tests (2026-12-07): each test below fails on a one-line bug that no earlier test caught.
class _ThreadWorld:
    """The part of World that pca_codes uses (sum), for ``size`` threads that call it in lockstep."""

    def __init__(self, rank: int, size: int, slots: list, barrier: threading.Barrier):
        self.rank, self.size, self.slots, self.barrier = rank, size, slots, barrier
        self.distributed = True

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        self.slots[self.rank] = t.clone()
        self.barrier.wait()
        total = sum(self.slots[1:], self.slots[0].clone())
        self.barrier.wait()
        return t.copy_(total)


def _sharded(fn, bounds):
    slots, barrier, out = [None] * len(bounds), threading.Barrier(len(bounds)), [None] * len(bounds)

    def rank(r):
        out[r] = fn(_ThreadWorld(r, len(bounds), slots, barrier), *bounds[r])

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(bounds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return torch.cat(out)


def test_pca_codes_of_shards_are_the_rows_of_the_whole_sets_codes_padding_included():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(10, 1, 8, 8, generator=g)  # 10 images < 16 dims: 6 seeded padding columns
    whole = pca_codes(images, 16, seed=2)
    bounds = [(0, 6), (6, 10)]
    shards = _sharded(
        lambda world, a, b: pca_codes(images[a:b], 16, seed=2, world=world, start=a, total=10), bounds
    )
    torch.testing.assert_close(shards, whole, rtol=1e-4, atol=1e-6)
    assert whole[:, 10:].abs().max() > 0  # the padding is there, and was compared


def test_random_codes_of_shards_are_the_rows_of_the_whole_table():
    whole = random_codes(10, 4, seed=3)
    assert torch.equal(torch.cat([random_codes(6, 4, 3, 0, 10), random_codes(4, 4, 3, 6, 10)]), whole)


def test_the_mapping_has_the_configs_hidden_width_and_layer_count():
    for layers in (1, 3):
        cfg = TrainConfig(seed=5, noise_dim=4, latent_dim=6, mapping_hidden=8, mapping_layers=layers)
        T = build_mapping(cfg)
        assert T.hparams() == {
            "in_dim": 4, "out_dim": 6, "hidden": 8, "layers": layers, "batch_norm": True, "output_affine": True,
        }  # fmt: skip
        assert sum(isinstance(m, torch.nn.Linear) for m in T.modules()) == layers + 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(6)
            want = MLP(4, 6, 8, layers, output_affine=True)
        for (name, a), b in zip(T.state_dict().items(), want.state_dict().values()):
            assert torch.equal(a, b), name


def test_a_checkpoints_tensors_of_another_dtype_are_refused_by_name(blobs):
    """check_tensor compares dtype and shape: codes of the right shape in float64 (or int64), or an Adam moment
    in float64 for a float32 weight, would be cast silently by copy_ / handed to the fused step; they are a
    ValueError naming the entry."""
    with pytest.raises(
        ValueError, match=r"^x is \(torch.float64, \(2,\)\), expected \(torch.float32, \(2,\)\)$"
    ):
        check_tensor("x", torch.zeros(2, dtype=torch.float64), (torch.float32, (2,)))
    trainer = GLOTrainer(blobs, tiny_config(batch_size=32), get_ops(OPS))
    state = trainer.state_dict()
    with pytest.raises(ValueError, match=r"^glo codes is \(torch.float64, "):
        trainer.load_state_dict({**state, "codes": state["codes"].double()})
    trainer.train_step(trainer.epoch_batches()[0])  # Adam has moments now
    opt = trainer.opt_g.state_dict()
    first = next(iter(opt["state"]))
    forged = {**opt, "state": {**opt["state"], first: {**opt["state"][first]}}}
    forged["state"][first]["exp_avg"] = forged["state"][first]["exp_avg"].double()
    with pytest.raises(ValueError, match=rf"^opt_g: exp_avg of parameter {first} is \(torch.float64, "):
        load_adam_state(trainer.opt_g, forged, "opt_g")


def test_an_optimizer_state_of_fewer_parameters_is_refused_naming_both_counts():
    """A state of fewer parameters than the model (another architecture's checkpoint) is refused by
    load_adam_state's own message, as one of more parameters is (the counts are compared, not only bounded)."""
    big = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    small = torch.nn.Linear(2, 3)
    opt_small = adam(small.parameters(), 1e-3, (0.9, 0.999))
    small(torch.randn(4, 2)).sum().backward()
    opt_small.step()
    opt_big = adam(big.parameters(), 1e-3, (0.9, 0.999))
    with pytest.raises(ValueError, match=r"^opt_g: the state is of 2 parameters, this model has 4$"):
        load_adam_state(opt_big, opt_small.state_dict(), "opt_g")
    big(torch.randn(4, 2)).sum().backward()
    opt_big.step()
    with pytest.raises(ValueError, match=r"^opt_g: the state is of 4 parameters, this model has 2$"):
        load_adam_state(opt_small, opt_big.state_dict(), "opt_g")


def test_a_glo_state_dict_is_a_snapshot_of_the_codes_not_a_view_of_the_live_table(blobs):
    """The latent optimizer updates the code table in place; a state taken before a step (a checkpoint being
    written, a Fit's saved state) must keep the codes as they were, so loading it later restores them."""
    cfg = tiny_config(batch_size=32)
    trainer = GLOTrainer(blobs, cfg, get_ops(OPS))
    state = trainer.state_dict()
    before = trainer.codes.clone()
    trainer.train_step(trainer.epoch_batches()[0])
    assert not torch.equal(trainer.codes, before)  # the step moved some codes
    assert torch.equal(state["codes"], before)
    trainer.load_state_dict(state)
    assert torch.equal(trainer.codes, before)


def test_latent_adam_steps_is_ignored_by_the_sgd_latent_optimizer(blobs):
    """latent_adam_steps ("rows"/"global") is an option of the Adam latent optimizer; with
    latent_optimizer="sgd" (a valid combination: no cross-field check) "rows" trains exactly as "global"
    (passing the row counts to SGD's step, which takes none, would be a TypeError at the first step)."""
    rows = GLOTrainer(blobs, tiny_config(batch_size=32, latent_optimizer="sgd", latent_adam_steps="rows"),
                      get_ops(OPS))  # fmt: skip
    plain = GLOTrainer(blobs, tiny_config(batch_size=32, latent_optimizer="sgd", latent_adam_steps="global"),
                       get_ops(OPS))  # fmt: skip
    for batch in rows.epoch_batches()[:2]:
        assert rows.train_step(batch) == plain.train_step(batch)
    assert torch.equal(rows.codes, plain.codes)


def test_a_glo_state_with_codes_off_the_unit_sphere_is_refused(blobs):
    """GLOTrainer.load_state_dict (a Fit's state, or a checkpoint's) checks the codes as training leaves them:
    on the unit sphere. The run folder's loaders check them too, which is why test_trust's forged checkpoints
    do not tell whether the trainer itself does; a state handed to it directly must be refused as well."""
    trainer = GLOTrainer(blobs, tiny_config(batch_size=32), get_ops(OPS))
    state = trainer.state_dict()
    codes = state["codes"].clone()
    codes[4] *= 50
    before = trainer.codes.clone()
    with pytest.raises(ValueError, match=r"codes must lie on the unit sphere .* got norm 50 at row 4"):
        trainer.load_state_dict({**state, "codes": codes})
    assert torch.equal(trainer.codes, before)


class _Stub(StageTrainer):
    """A stage of 12 rows in batches of 4 (3 steps an epoch) whose step returns the next of ``losses``."""

    stage = "glo"

    def __init__(self, losses=None):
        super().__init__(types.SimpleNamespace(batch_size=4, seed=0), None, 0, 12, None)
        self.losses = list(losses) if losses is not None else None
        self.steps_taken = 0

    def train_step(self, batch):
        self.steps_taken += 1
        return 1.0 if self.losses is None else self.losses.pop(0)


def test_an_epochs_seconds_are_its_wall_time_each_step_counted_once(monkeypatch):
    """With a clock that ticks 1 s per reading, the epoch's seconds are the time from its start to its end
    (each step's share is the time since the step before, not since the epoch began)."""
    ticks = iter(range(1000))
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    trainer = _Stub()
    row = run_epoch(trainer)
    assert row["steps"] == 3
    assert row["seconds"] == 4.0  # readings 0 (start), 1, 2, 3 (the steps), 4 (end)


def test_step_completed_names_the_running_epoch_from_0_and_the_row_the_epochs_done_from_1():
    seen, rows = [], []

    class Record(Hook):
        def step_completed(self, trainer, info):
            seen.append((info["epoch"], info["step"]))

        def epoch_completed(self, trainer, row):
            rows.append(row["epoch"])

    run_epochs(_Stub(), 2, [Record()])
    assert seen == [(0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (1, 6)]
    assert rows == [1, 2]


def test_a_state_stopped_after_an_epochs_last_step_resumes_and_only_closes_the_epoch():
    """A hook may stop a fit after any step (Hook.step_completed), the epoch's last one included: its state
    then has step_in_epoch == steps_per_epoch; loading it is not an error and the resumed epoch takes no
    further step (one step more than that is refused)."""
    first = _Stub()

    class Stop(Hook):
        def step_completed(self, trainer, info):
            if trainer.step_in_epoch == trainer.steps_per_epoch:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_epoch(first, [Stop()])
    state = first.counters()
    assert state["step_in_epoch"] == first.steps_per_epoch == 3
    again = _Stub()
    again.load_counters(state)
    row = run_epoch(again)
    assert again.steps_taken == 0 and row["steps"] == 3 and row["epoch"] == 1 and again.epoch == 1
    with pytest.raises(ValueError, match="step_in_epoch 4 exceeds the 3 steps"):
        _Stub().load_counters({**state, "step_in_epoch": 4})
    for name in ("epoch", "step_in_epoch", "global_step"):  # a trainer handed a state directly checks it too
        with pytest.raises(ValueError, match=rf"^{name} must be >= 0, got -1$"):
            _Stub().load_counters({**state, name: -1})


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_a_non_finite_loss_stops_the_epoch_at_that_step(bad):
    trainer = _Stub([1.0, bad, 1.0])
    with pytest.raises(
        DivergedError, match=rf"^the GLO stage diverged: the loss is {bad} at epoch 1, step 1\."
    ):
        run_epoch(trainer)
    assert trainer.steps_taken == 2  # the third step never ran


def test_autocast_is_for_cuda_only_the_cpu_trains_in_float32():
    assert isinstance(autocast_for(torch.device("cpu"), True), contextlib.nullcontext)
    with autocast_for(torch.device("cpu"), True):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert isinstance(autocast_for(torch.device("cuda"), False), contextlib.nullcontext)


# -- resume rules --------------------------------------------------------------------
def test_a_folder_holding_only_its_model_file_refuses_other_imle_stage_fields(tmp_path, blob_file):
    """The IMLE stage's fields may change only while a checkpoint says the run is in its GLO phase:
    a folder whose checkpoints are gone (the model file only) would retrain everything under them."""
    cfg = tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=1)
    out = tmp_path / "run"
    train(cfg, out, stage="glo", **QUIET)
    shutil.rmtree(ckpt.checkpoint_dir(out))
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(
        RunFolderError, match=rf"different config \(noise_dim {cfg.noise_dim} -> {cfg.noise_dim + 1};"
    ):
        train(dataclasses.replace(cfg, noise_dim=cfg.noise_dim + 1), out, **QUIET)
    assert (out / "model.safetensors").read_bytes() == before


def test_a_finished_glo_stage_cannot_switch_to_pixel_imle(tmp_path, blob_file):
    """imle_space is not one of the IMLE stage's free fields: pixel IMLE would discard the trained GLO
    stage and train G anew, in the folder of a GLANN run."""
    cfg = tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=1)
    out = tmp_path / "run"
    train(cfg, out, stage="glo", **QUIET)
    with pytest.raises(RunFolderError, match=r"different config \(imle_space 'latent' -> 'pixel';"):
        train(dataclasses.replace(cfg, imle_space="pixel"), out, **QUIET)
    assert load_model(out).T is None and not (out / "resumes.jsonl").exists()


def test_a_resume_cannot_drop_imle_epochs_already_trained(tmp_path, blob_file):
    """As for GLO: IMLE epochs already trained cannot be taken back (recorded but never undone)."""
    cfg = tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=2)
    out = tmp_path / "run"
    train(cfg, out, **QUIET)
    with pytest.raises(
        ConfigError,
        match=r"^config field imle_epochs \(--imle-epochs\) 1: .* has trained 2 IMLE epochs already; give at least 2",
    ):
        train(dataclasses.replace(cfg, imle_epochs=1), out, **QUIET)
    assert not (out / "resumes.jsonl").exists()


# -- resumes.jsonl -------------------------------------------------------------------
def _stopped_in_imle(tmp_path, blob_file, glo_epochs: int = 1):
    """A run folder stopped at IMLE step 2 (checkpoints every step), and its config."""
    out = tmp_path / "run"
    cfg = tiny_config(dataset=blob_file, glo_epochs=glo_epochs, imle_epochs=2, ckpt_every=1)
    with pytest.raises(Interrupt):
        train(cfg, out, on_step=interrupt_at("imle", 2), **QUIET)
    return out, cfg


def test_resumes_jsonl_keeps_one_line_per_resume_at_the_phases_own_position(tmp_path, blob_file):
    """Each resume that changes a field appends its line (earlier lines kept: config.json as first
    written + these lines = the run's history), and the line's position is the checkpoint's in its phase."""
    out, cfg = _stopped_in_imle(tmp_path, blob_file)
    at = {k: ckpt.load_latest(out)["imle"][k] for k in ("epoch", "step_in_epoch", "global_step")}
    assert at == {"epoch": 0, "step_in_epoch": 2, "global_step": 2}
    with pytest.raises(Interrupt):
        train(
            dataclasses.replace(cfg, imle_lr=cfg.imle_lr / 2), out, on_step=interrupt_at("imle", 4), **QUIET
        )
    train(dataclasses.replace(cfg, imle_lr=cfg.imle_lr / 4), out, **QUIET)
    lines = [json.loads(x) for x in (out / "resumes.jsonl").read_text().splitlines()]
    assert [line["changed"] for line in lines] == [
        {"imle_lr": [cfg.imle_lr, cfg.imle_lr / 2]},
        {"imle_lr": [cfg.imle_lr / 2, cfg.imle_lr / 4]},
    ]
    assert {k: lines[0][k] for k in ("phase", *at)} == {"phase": "imle", **at}
    assert {k: lines[1][k] for k in ("phase", *at)} == {"phase": "imle", "epoch": 1, "step_in_epoch": 1,
                                                        "global_step": 4}  # fmt: skip


def test_a_resume_killed_while_logging_its_change_leaves_config_json_as_it_was(
    tmp_path, blob_file, monkeypatch
):
    """resumes.jsonl is written before config.json: a kill between them leaves the change unrecorded and
    unapplied (the next resume records it), never config.json changed with no line saying so."""
    out, cfg = _stopped_in_imle(tmp_path, blob_file)
    before = (out / "config.json").read_bytes()
    real = run_module.append_line

    def killed(path, line):
        if path.name == "resumes.jsonl":
            raise Interrupt
        real(path, line)

    monkeypatch.setattr(run_module, "append_line", killed)
    with pytest.raises(Interrupt):
        train(dataclasses.replace(cfg, imle_lr=cfg.imle_lr / 2), out, **QUIET)
    monkeypatch.undo()
    assert (out / "config.json").read_bytes() == before and not (out / "resumes.jsonl").exists()


# -- checkpoints and metrics rows -----------------------------------------------------
def test_a_kill_while_an_epochs_row_is_written_loses_no_row(tmp_path, blob_file, monkeypatch):
    """The epoch's checkpoint comes after its metrics row: a kill before the row is written redoes the
    epoch's end on resume and writes the row, never a checkpoint past a row that is missing."""
    real = run_module.append_line

    def killed(path, line):
        if path.name == "metrics.jsonl" and json.loads(line)["epoch"] == 1:
            raise Interrupt
        real(path, line)

    out = tmp_path / "run"
    monkeypatch.setattr(run_module, "append_line", killed)
    with pytest.raises(Interrupt):
        train(tiny_config(dataset=blob_file, glo_epochs=2, imle_epochs=1, ckpt_every=1), out, **QUIET)
    monkeypatch.undo()
    train(None, out, **QUIET)
    assert [(r["stage"], r["epoch"]) for r in _rows(out)] == [("glo", 1), ("glo", 2), ("imle", 1)]


def test_checkpoints_every_ckpt_every_steps_and_at_each_epochs_end_never_twice(
    tmp_path, blob_file, monkeypatch
):
    """3 steps an epoch, ckpt_every 2: steps 2 and 4 by the cadence, 3 and 6 at the epochs' ends; step 6
    is both and is written once (after its row), not twice."""
    saved = []
    real = ckpt.save_step

    def counting(run, world, total, main, per_row, info, fingerprint):
        saved.append((info["phase"], info["global_step"]))
        return real(run, world, total, main, per_row, info, fingerprint)

    monkeypatch.setattr(ckpt, "save_step", counting)
    train(tiny_config(dataset=blob_file, glo_epochs=2, imle_epochs=0, ckpt_every=2), tmp_path / "r", stage="glo",
          **QUIET)  # fmt: skip
    assert saved == [("glo", 2), ("glo", 3), ("glo", 4), ("glo", 6)]


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("stage", ["glo", "imle"])
def test_a_state_gone_non_finite_after_its_last_step_is_never_saved(tmp_path, blob_file, stage, value):
    """The checkpoint's own check: a NaN or Inf in a network after the epoch's last (finite) loss
    stops the run at the epoch's checkpoint, whichever stage, and the last good checkpoint stays."""
    cfg = tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=1, ckpt_every=0)

    def poison(trainer, info):
        if info["stage"] == stage and info["step"] == 3:  # the epoch's last step (3 steps an epoch)
            net = trainer.G if stage == "glo" else trainer.generator
            with torch.no_grad():
                next(net.parameters()).view(-1)[0] = value

    out = tmp_path / "run"
    with pytest.raises(DivergedError, match="holds NaN or Inf"):
        train(cfg, out, on_step=poison, **QUIET)
    manifest = ckpt.read_manifest(out)
    assert manifest is None or (
        manifest["phase"] == "glo" and stage == "imle"
    )  # GLO's end, before the poison


# -- _prune_metrics ------------------------------------------------------------------
def _fit_at(glo, imle):
    return types.SimpleNamespace(
        glo=types.SimpleNamespace(epoch=glo), imle=None if imle is None else types.SimpleNamespace(epoch=imle)
    )


def test_pruned_metrics_keep_each_stages_completed_epochs_and_drop_foreign_lines(tmp_path):
    """The rows kept are those of epochs the checkpoint completed, in each stage; a line that is
    JSON but no row of ours (no epoch, another stage, a list) is dropped, not a crash of the resume."""
    path = tmp_path / "metrics.jsonl"
    rows = [{"stage": "glo", "epoch": 1}, {"stage": "glo", "epoch": 2}, {"stage": "imle", "epoch": 1},
            {"stage": "imle", "epoch": 2}, {"note": "mine"}, {"stage": "gan", "epoch": 1}, [1, 2]]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_module._prune_metrics(path, _fit_at(2, 1))
    assert [json.loads(x) for x in path.read_text().splitlines()] == rows[:3]


def test_pruning_metrics_replaces_the_file_never_rewrites_it_in_place(tmp_path):
    """A reader that opened metrics.jsonl before the resume pruned it still reads it whole (the pruned
    file is renamed over it, as every run file is written), and no temp file is left."""
    path = tmp_path / "metrics.jsonl"
    text = "".join(json.dumps({"stage": "glo", "epoch": e}) + "\n" for e in (1, 2))
    path.write_text(text)
    with open(path) as reader:
        run_module._prune_metrics(path, _fit_at(1, None))
        assert reader.read() == text
    assert path.read_text() == text.splitlines(keepends=True)[0]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


# -- readers -------------------------------------------------------------------------
def test_readers_say_when_the_model_file_is_behind_added_glo_epochs(tmp_path, blob_file):
    """`--stage glo` finished at 1 epoch, then a resume to 2 GLO epochs stopped: the model file holds
    GLO epoch 1, the checkpoint is further on; the note says so (it looked only at the IMLE epochs)."""
    out = tmp_path / "run"
    cfg = tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=1, ckpt_every=1)
    train(cfg, out, stage="glo", **QUIET)
    with pytest.raises(Interrupt):
        train(
            dataclasses.replace(cfg, glo_epochs=2), out, stage="glo", on_step=interrupt_at("glo", 4), **QUIET
        )
    note = run_module.model_file_behind(out, load_model(out))
    assert note is not None and "is the model trained to GLO epoch 1; the run's latest checkpoint has done 1 " \
        "of its 2 GLO epochs" in note  # fmt: skip


def test_a_path_spelled_relative_by_an_older_run_is_no_recorded_change(tmp_path, blob_file, monkeypatch):
    """A run whose config.json names its dataset relative (as 0.3.3 saved it), resumed by the command
    that started it (absolute now), records only what the resume really changed."""
    out = tmp_path / "run"
    cfg = tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=1)
    train(cfg, out, **QUIET)
    monkeypatch.chdir(tmp_path)
    saved = json.loads((out / "config.json").read_text())

    saved["dataset"] = os.path.relpath(blob_file, tmp_path)
    (out / "config.json").write_text(json.dumps(saved))
    train(dataclasses.replace(cfg, imle_epochs=2), out, **QUIET)
    (line,) = [json.loads(x) for x in (out / "resumes.jsonl").read_text().splitlines()]
    assert line["changed"] == {"imle_epochs": [1, 2]}


def test_a_start_that_failed_before_any_checkpoint_is_resumed_from_its_config_json(tmp_path, blob_file):
    """`glann train --out RUN` with no options on a start killed before its first checkpoint trains the
    config.json it wrote (a config given instead would replace it)."""
    out = tmp_path / "run"
    cfg = tiny_config(dataset=blob_file, glo_epochs=1, imle_epochs=1, ckpt_every=0)
    with pytest.raises(Interrupt):
        train(cfg, out, on_step=interrupt_at("glo", 1), **QUIET)
    assert ckpt.read_manifest(out) is None
    train(None, out, **QUIET)
    assert load_model(out).config["imle_epochs"] == 1


def test_resume_lines_chain_when_a_resume_died_before_its_first_checkpoint(tmp_path, blob_file, monkeypatch):
    """A resume that changed imle_lr and died before writing a checkpoint left config.json ahead of the
    checkpoint's config; the next resume's line starts from config.json (what the run last trained with), so
    the lines chain: config.json as first written + the lines = the run's history."""
    out, cfg = _stopped_in_imle(tmp_path, blob_file)

    def dies(*args, **kwargs):
        raise Interrupt

    monkeypatch.setattr(ckpt, "save_step", dies)
    with pytest.raises(Interrupt):
        train(dataclasses.replace(cfg, imle_lr=cfg.imle_lr / 2), out, **QUIET)
    monkeypatch.undo()
    train(dataclasses.replace(cfg, imle_lr=cfg.imle_lr / 4), out, **QUIET)
    lines = [json.loads(x)["changed"] for x in (out / "resumes.jsonl").read_text().splitlines()]
    assert lines == [
        {"imle_lr": [cfg.imle_lr, cfg.imle_lr / 2]},
        {"imle_lr": [cfg.imle_lr / 2, cfg.imle_lr / 4]},
    ]


def test_a_resume_cannot_lower_glo_epochs_once_imle_began_and_says_why(tmp_path, blob_file):
    """Fewer GLO epochs once IMLE has begun is refused as any change of them is: the stage finished and
    IMLE trains on its codes (the message named "epochs already trained" for a decrease only)."""
    out, cfg = _stopped_in_imle(tmp_path, blob_file, glo_epochs=2)
    with pytest.raises(
        ConfigError, match=r"^config field glo_epochs \(--glo-epochs\) 1: the GLO stage .* finished"
    ):
        train(dataclasses.replace(cfg, glo_epochs=1), out, **QUIET)
