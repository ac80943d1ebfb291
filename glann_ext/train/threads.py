"""How many CPU threads a training step of a small dense network should use, and the floating-point mode it runs in.

A step of ``T`` (an MLP on codes) is a few small matrix products, so on the CPU it is bound by per-operation
overhead, not arithmetic: every parallel region pays a fork/join that costs more than the work it splits.
On a 2-core AVX2 EPYC (``IMLETrainer.train_step``, latent 32, noise 32, 2026-12-03; steps back to back) one
intra-op thread against two, in ms per step:

===========================  ============  ========  =========
``T`` (hidden x layers)      batch         1 thread  2 threads
===========================  ============  ========  =========
256 x 2 (16 MFLOP a step)    32            1.1-2.3   1.9-4.9
16 -> 256 x 2 -> 64          64            1.3-1.7   2.1-2.7
256 x 2 (63 MFLOP)           128           0.6-1.3   0.8-1.9
512 x 2 (226 MFLOP)          128           2.0-2.6   1.7-2.6
1024 x 2 (214 MFLOP)         32            11.1-11.5 9.7-10.4
1024 x 3 (1.7 GFLOP)         128           10.6      6.8
===========================  ============  ========  =========

Those are with ``OMP_WAIT_POLICY=PASSIVE``, which importing glann_ext before torch sets (``glann_ext._info``):
idle OpenMP threads sleep, so every parallel region wakes them. With threads that spin instead (the policy
``ACTIVE``, or torch's default when torch was imported first) two threads cost little to wake and one is no
faster: ``T`` 16 -> 256 x 2 -> 64 at batch 128 took 0.83-0.93 ms on one thread against 0.64-0.66 on two
(batch 64: 1.27-1.44 against 1.31-1.34), and pytest-benchmark (which imports torch first) measures the same.

So a step below :data:`SMALL_STEP_FLOPS` runs on one thread, and everything else as torch is set. It does so
whatever the wait policy: with spinning threads one thread is at worst ~30% slower at batch 128 and level at
64, and a model must not depend on whether a script imported torch or glann_ext first (it did until
2026-12-06: the rounding of ``T``'s steps followed the import order). Only dense networks (Linear and 1-D BatchNorm layers) are judged: a
convolution's parameter count says nothing of its arithmetic. Matching (the exact search over all draws) is
large and keeps every thread.

``T``'s steps also run with denormal floats flushed to zero (:func:`denormals_flushed`). ``T`` ends up with
dead ReLU units: their gradients are zero, so Adam's moments of their weights decay geometrically (by beta1 and
beta2 a step) and weight decay shrinks the weights, until all of them are denormal, which x86 cores compute
on a slow path. On the quality issue's 25-epoch budget (20,000 whitened codes, ``T`` 32 -> 256 x 2 -> 64,
batch 32; AVX-512 Xeon, 2026-12-04) an IMLE epoch took 0.9 s at first and 1.4 s by the last with Adam's
betas (0.5, 0.999), 4.1 s with (0.9, 0.9) (11,700 denormal moments in the second layer's weights); flushed, every
epoch took 0.9-1.0 s and the losses agreed to four digits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# fwd + bwd multiply-adds x 2 of one step below which one thread is faster (between the table's 63 and 214)
SMALL_STEP_FLOPS = 100e6
_DENSE = (nn.Linear, nn.BatchNorm1d)


def dense_step_flops(module: nn.Module, batch: int) -> float | None:
    """Floating-point operations of one training step (forward and backward: 6 per weight and row) of
    ``module`` on ``batch`` rows, or None when it has a parameterised layer other than Linear/BatchNorm1d."""
    weights = 0
    for layer in module.modules():
        own = list(layer.parameters(recurse=False))
        if not own:
            continue
        if not isinstance(layer, _DENSE):
            return None
        if isinstance(layer, nn.Linear):
            weights += layer.weight.numel()
    return 6.0 * weights * batch


def step_threads(module: nn.Module, batch: int, device: torch.device) -> int | None:
    """The intra-op threads for a training step of ``module`` on ``batch`` rows: 1 for a small dense
    network on the CPU (waking idle threads costs every parallel region more than the work it splits), None
    (leave torch's setting) otherwise."""
    if device.type != "cpu":
        return None
    flops = dense_step_flops(module, batch)
    return 1 if flops is not None and flops < SMALL_STEP_FLOPS else None


# a denormal double and one, as module globals so that the compiler cannot fold their product
_DENORMAL, _ONE = 1e-310, 1.0


def flushing_denormals() -> bool:
    """Whether this thread flushes denormal floats to zero now. torch has no getter for the mode, so ask the
    arithmetic: a denormal times one is zero only when flushing. Python's floats run under the thread's
    floating-point control register (MXCSR on x86, FPCR on Arm), the one ``torch.set_flush_denormal`` sets
    for torch's CPU kernels; asked this way the check costs 0.07 us a call against 4.7 with a tensor, and
    it runs at every step of ``T``."""
    return _DENORMAL * _ONE == 0.0


@contextmanager
def denormals_flushed() -> Iterator[None]:
    """Run the block with denormal floats flushed to zero (``torch.set_flush_denormal(True)``) and restore the
    previous mode after it, also on error. The mode belongs to the calling thread: it covers a step run on one
    intra-op thread (:func:`step_threads`) whole, and only the calling thread's share of a parallel one. A
    no-op where the CPU cannot flush, or where the caller already does."""
    if flushing_denormals() or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
