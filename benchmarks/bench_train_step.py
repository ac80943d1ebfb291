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
steps were moved to one (``glann_ext.train.threads``; the same on CUDA, where nothing changes). That move
happens only where idle OpenMP threads sleep, so run with ``OMP_WAIT_POLICY=PASSIVE`` (what the ``glann``
command gets) to compare the two; pytest imports torch first, and under torch's default (spinning) policy
both rows take the same step.
"""

from __future__ import annotations

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


def _cycling(trainer, batch: int, steps: int = 16):
    batches = [
        torch.randperm(trainer.total, generator=torch.Generator().manual_seed(i))[:batch]
        for i in range(steps)
    ]
    it = [0]

    def step():
        trainer.train_step(batches[it[0] % steps])
        it[0] += 1

    return step


def _config(method: str, device: str):
    return preset("laptop", device=device, ops="reference" if method == "reference_ops" else "fused")


def _glo_step(method: str, device: str):
    cfg = _config(method, device)
    images = torch.rand(N_IMAGES, *IMAGE, generator=torch.Generator().manual_seed(0))
    tr = GLOTrainer(images, cfg, get_ops(cfg.ops), device)
    if method != "glann_ext":
        tr.opt_g = _plain(tr.G, lambda p: torch.optim.Adam(p, lr=cfg.lr_g, betas=cfg.betas))
    return _cycling(tr, cfg.batch_size)


def _imle_step(method: str, device: str):
    cfg = _config(method, device)
    codes = torch.nn.functional.normalize(torch.randn(N_IMAGES, cfg.latent_dim), dim=1)
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
    return _cycling(tr, tr.batch_size)  # imle_batch_size: T's batch of codes


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
