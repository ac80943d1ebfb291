"""Benchmarks of whole training steps as ``glann train`` runs them, against the same step in plainer setups.

    pytest benchmarks/bench_train_step.py --benchmark-group-by=group --benchmark-columns=median,rounds

Groups, at the ``laptop`` preset's shapes (Fashion-MNIST 28 x 28 images; every other shape and the batch
sizes are read from ``preset("laptop")`` and ``build_mapping``, and so are the group names, which show them):
* ``glo step``: one :meth:`GLOTrainer.train_step <glann_ext.train.glo.GLOTrainer.train_step>` (G forward,
  the Laplacian-pyramid loss, backward, Adam on G, the sparse sphere Adam on the batch's codes) on a batch
  of ``batch_size`` images (128).
* ``imle step``: one :meth:`IMLETrainer.train_step <glann_ext.train.imle.IMLETrainer.train_step>` of GLANN's
  second stage (T: noise ``noise_dim`` -> ``mapping_hidden`` x ``mapping_layers`` -> codes ``latent_dim``, at
  present 16 -> 256 -> 256 -> 64, MSE to the matched codes, Adam with weight decay) on a batch of
  ``imle_batch_size`` codes (64).

Rows: ``glann_ext`` is the trainer as built (on the CPU: G's convolutions in channels-last layout and the
fused ``torch.optim.Adam`` step, see ``glann_ext.train.build``); ``nchw_adam`` is the same trainer with G
back in NCHW layout and torch's default (per-tensor) Adam step, the setup before they were adopted;
``reference_ops`` is ``nchw_adam`` with ``ops="reference"`` (the loss and the code step as plain torch ops:
torch eager). CUDA rows run the same (the layout change applies to the CPU only). The IMLE group also has
``all_threads``: the trainer as built but with T's step on every intra-op thread, as before small dense
steps were moved to one (``glann_ext.train.threads``; the same on CUDA, where nothing changes). Run with
``OMP_WAIT_POLICY=PASSIVE`` (what the ``glann`` command gets) to time what users get: pytest imports torch
first, and under torch's default (spinning) policy two threads cost little to wake.

Before it is timed, every row's first step is checked against the same step of the ``reference_ops`` row
from the same start (both trainers are built from the same seeded config): the loss it returns (rtol 1e-4)
and the update it makes to G's parameters and the batch's codes (GLO) or to T's parameters (IMLE): cosine
similarity with the reference's update at least 0.999 and norms within 1% (Adam's first step is about
``lr * sign(grad)`` per weight, so a wrong gradient or a missing update moves both). ``reference_ops``
itself is the baseline and is checked only for a finite loss. The IMLE rows' matching (every target's
matched noise for the epoch) must also be the reference's but for near-ties (at most 1 target in 1,000). ``--benchmark-disable`` runs the check and one
step, untimed.
"""

from __future__ import annotations

import math

import pytest
import torch

from glann_ext.backend import get_ops
from glann_ext.train.build import build_mapping
from glann_ext.train.config import preset
from glann_ext.train.glo import GLOTrainer
from glann_ext.train.imle import IMLETrainer

from ._device import DEVICES, calibrated_iterations, fresh, timed

N_IMAGES, ROUNDS = 2048, 30
IMAGE = (1, 28, 28)  # Fashion-MNIST, the laptop preset's data set
LAPTOP = preset("laptop")
METHODS = ("glann_ext", "nchw_adam", "reference_ops")
IMLE_METHODS = (*METHODS, "all_threads")


def _plain(module: torch.nn.Module, make_opt) -> torch.optim.Adam:
    """NCHW parameters and a default (non-fused) Adam over them, as before channels-last and fused Adam."""
    module.to(memory_format=torch.contiguous_format)
    return make_opt(module.parameters())


def _mapping_shape(cfg) -> str:
    """T's layer widths, read from the module ``build_mapping`` builds: "16 -> 256 -> 256 -> 64"."""
    linears = [m for m in build_mapping(cfg).modules() if isinstance(m, torch.nn.Linear)]
    return " -> ".join(str(n) for n in [linears[0].in_features, *(m.out_features for m in linears)])


def _batches(trainer, batch: int, steps: int = 16) -> list[torch.Tensor]:
    return [
        torch.randperm(trainer.total, generator=torch.Generator().manual_seed(i))[:batch]
        for i in range(steps)
    ]


def _cycling(trainer, batch: int, steps: int = 16):
    batches = _batches(trainer, batch, steps)
    it = [0]

    def step():
        trainer.train_step(batches[it[0] % steps])
        it[0] += 1

    return step


def _config(method: str, device: str):
    return preset("laptop", device=device, ops="reference" if method == "reference_ops" else "fused")


def _glo_trainer(method: str, device: str) -> GLOTrainer:
    cfg = _config(method, device)
    images = torch.rand(N_IMAGES, *IMAGE, generator=torch.Generator().manual_seed(0))
    tr = GLOTrainer(images, cfg, get_ops(cfg.ops), device)
    if method != "glann_ext":
        tr.opt_g = _plain(tr.G, lambda p: torch.optim.Adam(p, lr=cfg.lr_g, betas=cfg.betas))
    return tr


def _glo_step(method: str, device: str):
    tr = _glo_trainer(method, device)
    reference = None if method == "reference_ops" else _glo_trainer("reference_ops", device)
    check_first_step(tr, reference, tr.cfg.batch_size, lambda t: [*t.G.parameters(), t.codes])
    return _cycling(tr, tr.cfg.batch_size)


def _imle_trainer(method: str, device: str) -> IMLETrainer:
    cfg = _config(method, device)
    codes = torch.nn.functional.normalize(
        torch.randn(N_IMAGES, cfg.latent_dim, generator=torch.Generator().manual_seed(0)), dim=1
    )
    tr = IMLETrainer(codes, build_mapping(cfg), cfg, get_ops(cfg.ops), device)
    if method == "all_threads":
        tr.step_threads = None
    elif method != "glann_ext":
        tr.opt = _plain(
            tr.generator,
            lambda p: torch.optim.Adam(
                p, lr=cfg.imle_lr, betas=cfg.imle_betas, weight_decay=cfg.imle_weight_decay
            ),
        )
    tr.begin_epoch()  # the matching: every target gets its noise
    return tr


def _imle_step(method: str, device: str):
    tr = _imle_trainer(method, device)
    reference = None if method == "reference_ops" else _imle_trainer("reference_ops", device)
    if reference is not None:  # the epoch's matching: a wrong match may miss the first step's batch
        differ = int((tr.matched_noise != reference.matched_noise).any(1).sum())
        assert differ <= N_IMAGES // 1000, (
            f"the matching gives {differ} of {N_IMAGES} targets other noise than the reference's (near-ties: "
            f"at most {N_IMAGES // 1000})"
        )
    check_first_step(tr, reference, tr.batch_size, lambda t: list(t.generator.parameters()))
    return _cycling(tr, tr.batch_size)  # imle_batch_size: T's batch of codes


def _first_update(trainer, batch: torch.Tensor, tensors) -> tuple[float, torch.Tensor]:
    """The loss of ``trainer``'s step on ``batch`` and what it changed in ``tensors(trainer)``, flattened."""
    before = [t.detach().double().flatten().cpu() for t in tensors(trainer)]
    loss = trainer.train_step(batch)
    after = [t.detach().double().flatten().cpu() for t in tensors(trainer)]
    return loss, torch.cat([a - b for a, b in zip(after, before)])


def _gradients(trainer, tensors) -> torch.Tensor | None:
    """The gradients the last step left on ``tensors(trainer)`` (the networks' parameters), flattened; None
    when it left none."""
    grads = [t.grad.detach().double().flatten().cpu() for t in tensors(trainer) if t.grad is not None]
    return torch.cat(grads) if grads else None


def _same_direction_and_size(what: str, got: torch.Tensor, want: torch.Tensor) -> None:
    cos = float(got @ want / (got.norm() * want.norm()).clamp_min(1e-300))
    ratio = float(got.norm() / want.norm().clamp_min(1e-300))
    assert cos >= 0.999 and abs(ratio - 1) <= 0.01, (
        f"the first step's {what} has cosine {cos:.6f} with the reference's and {ratio:.4f}x its norm"
    )


def check_first_step(trainer, reference, batch_size: int, tensors) -> None:
    """``trainer``'s first step against ``reference``'s (the ``reference_ops`` row's trainer, built from the
    same seeded config; None for that row itself: only a finite loss is asked) on the same batch: the loss
    (rtol 1e-4), the update of ``tensors(trainer)`` and the gradients the step left on them, each in
    direction (cosine >= 0.999) and size (norms within 1%). The gradients because Adam's steps do not see a
    gradient off by a constant factor (a backward missing a factor 2 passed the update's check). The trainer
    is then as built plus one step: the timing starts from there."""
    batch = _batches(trainer, batch_size, 1)[0]
    loss, update = _first_update(trainer, batch, tensors)
    assert math.isfinite(loss), f"the first step's loss is {loss}"
    if reference is None:
        return
    grads = _gradients(trainer, tensors)
    want_loss, want = _first_update(reference, batch, tensors)
    assert math.isclose(loss, want_loss, rel_tol=1e-4), f"loss {loss:.7g}, the reference's {want_loss:.7g}"
    _same_direction_and_size("update", update, want)
    want_grads = _gradients(reference, tensors)
    assert (grads is None) == (want_grads is None), "one trainer left gradients, the other none"
    if grads is not None:
        _same_direction_and_size("gradient", grads, want_grads)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("device", DEVICES)
def test_glo_step(benchmark, device, method):
    c = LAPTOP
    benchmark.group = (
        f"glo step {device} ({IMAGE[1]} x {IMAGE[2]}, width {c.gen_width}, latent {c.latent_dim}, "
        f"batch {c.batch_size})"
    )
    fresh(device)
    benchmark.pedantic(timed(_glo_step(method, device), device), rounds=ROUNDS, warmup_rounds=3)


@pytest.mark.parametrize("method", IMLE_METHODS)
@pytest.mark.parametrize("device", DEVICES)
def test_imle_step(benchmark, device, method):
    benchmark.group = f"imle step {device} (T {_mapping_shape(LAPTOP)}, batch {LAPTOP.imle_batch_size})"
    fresh(device)
    run = timed(_imle_step(method, device), device)
    # back-to-back steps per round, as training takes them (one ~1 ms call per round times the wake-up of an
    # idle thread pool as much as the step)
    benchmark.pedantic(run, rounds=ROUNDS, iterations=calibrated_iterations(run), warmup_rounds=2)
