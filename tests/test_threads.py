"""Small dense training steps run on one CPU thread; everything else keeps torch's setting. T's steps and
matching flush denormal floats to zero."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from glann_testing import child_kwargs
from torch import nn

from glann_ext import _info
from glann_ext._threads import intra_op_threads
from glann_ext.models import MLP, DCGANGenerator
from glann_ext.train import IMLETrainer, TrainConfig, get_ops
from glann_ext.train.threads import (
    SMALL_STEP_FLOPS,
    denormals_flushed,
    dense_step_flops,
    flushing_denormals,
    step_threads,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def sleeping_threads(monkeypatch):
    """What importing glann_ext before torch sets (the ``glann`` command); tests may override it."""
    monkeypatch.setattr(_info, "_WAIT_POLICY", "PASSIVE")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_dense_step_flops_counts_six_per_linear_weight_and_row():
    mlp = MLP(16, 32, hidden=256, layers=2)  # Linear(16,256), BN, Linear(256,256), BN, Linear(256,32)
    weights = 16 * 256 + 256 * 256 + 256 * 32
    assert dense_step_flops(mlp, 32) == 6.0 * weights * 32
    assert dense_step_flops(nn.Sequential(nn.Linear(3, 5, bias=False)), 7) == 6.0 * 15 * 7


def test_a_convolutional_network_is_not_judged():
    assert dense_step_flops(DCGANGenerator(8, 28, 1, 8), 4) is None
    assert step_threads(DCGANGenerator(8, 28, 1, 8), 4, CPU) is None


def test_one_thread_only_for_small_dense_steps_on_the_cpu():
    small = MLP(16, 32, hidden=256, layers=2)
    assert dense_step_flops(small, 32) < SMALL_STEP_FLOPS
    assert step_threads(small, 32, CPU) == 1
    assert step_threads(small, 32, torch.device("cuda")) is None
    wide = MLP(32, 32, hidden=1024, layers=3)
    assert dense_step_flops(wide, 128) > SMALL_STEP_FLOPS
    assert step_threads(wide, 128, CPU) is None


def test_the_threshold_lies_between_the_measured_63_and_214_mflop_steps():
    """The table of the module docstring (latent and noise 32): T 256 x 2 at batch 128 (63 MFLOP) ran faster
    on one thread, 1024 x 2 at batch 32 (214 MFLOP) on two; found by mutation testing: a threshold of 50 or
    250 MFLOP passed every test."""
    fast_alone, fast_together = MLP(32, 32, hidden=256, layers=2), MLP(32, 32, hidden=1024, layers=2)
    assert round(dense_step_flops(fast_alone, 128) / 1e6) == 63
    assert round(dense_step_flops(fast_together, 32) / 1e6) == 214
    assert step_threads(fast_alone, 128, CPU) == 1
    assert step_threads(fast_together, 32, CPU) is None


def test_only_the_cpu_gets_one_thread():
    """Any device other than the CPU (not only CUDA) keeps torch's setting (found by mutation testing: judging
    every device but CUDA passed every test)."""
    small = MLP(16, 32, hidden=256, layers=2)
    for device in ("cuda", "mps", "meta", "xpu"):
        assert step_threads(small, 32, torch.device(device)) is None, device


@pytest.mark.parametrize("policy", ["ACTIVE", None, "PASSIVE"])
def test_the_wait_policy_does_not_choose_the_threads(monkeypatch, policy):
    """A script that imported torch first (spinning threads) trained another model than the CLI: T's steps
    ran on two threads there and rounded otherwise. The choice is now the network's and the batch's alone."""
    monkeypatch.setattr(_info, "_WAIT_POLICY", policy)
    assert step_threads(MLP(16, 32, hidden=256, layers=2), 32, CPU) == 1
    assert step_threads(MLP(32, 32, hidden=1024, layers=3), 128, CPU) is None


def test_the_policy_reported_is_the_one_libgomp_read_not_a_later_environment(monkeypatch):
    """libgomp reads OMP_WAIT_POLICY once; changing the environment afterwards changes nothing it does."""
    monkeypatch.setattr(_info, "_WAIT_POLICY", None)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert _info.omp_wait_policy().startswith("default")


def test_intra_op_threads_restores_the_setting_also_on_error(two_threads):
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="boom"), intra_op_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    with intra_op_threads(None):
        assert torch.get_num_threads() == 2


@pytest.fixture
def can_flush():
    """Skips where the CPU has no flush-to-zero mode (``torch.set_flush_denormal`` answers False)."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormal floats")
    torch.set_flush_denormal(False)


def _denormal_half() -> float:
    return (torch.tensor([2e-39]) * 0.5).item()  # 1e-39 is denormal in float32


def test_denormals_flushed_inside_the_block_and_restored_also_on_error(can_flush):
    assert not flushing_denormals() and _denormal_half() > 0
    with denormals_flushed():
        assert flushing_denormals() and _denormal_half() == 0.0
    assert not flushing_denormals() and _denormal_half() > 0
    with pytest.raises(RuntimeError, match="boom"), denormals_flushed():
        raise RuntimeError("boom")
    assert not flushing_denormals()


def test_denormals_flushed_leaves_a_callers_flushing_on(can_flush):
    torch.set_flush_denormal(True)
    try:
        with denormals_flushed():
            assert flushing_denormals()
        assert flushing_denormals()  # the caller's mode, not switched off on the way out
    finally:
        torch.set_flush_denormal(False)


class _ThreadSpy(nn.Module):
    """A small MLP that records torch's thread count and the denormal mode at every forward pass."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.mlp, self.seen, self.flushing = mlp, [], []

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        self.flushing.append(flushing_denormals())
        return self.mlp(e)


@pytest.mark.parametrize(("hidden", "expected"), [(64, 1), (2048, 2)])
def test_imle_steps_of_a_small_mapping_run_on_one_thread_and_matching_on_all(two_threads, hidden, expected):
    cfg = TrainConfig(latent_dim=8, noise_dim=8, imle_batch_size=16, imle_epochs=1, seed=0)
    codes = torch.nn.functional.normalize(torch.randn(64, 8), dim=1)
    spy = _ThreadSpy(MLP(8, 8, hidden=hidden, layers=2))
    trainer = IMLETrainer(codes, spy, cfg, get_ops("fused"))
    trainer.begin_epoch()  # matching: all threads
    assert spy.seen == [2]
    trainer.train_step(trainer.epoch_batches()[0])
    assert spy.seen[1:] == [expected]
    assert torch.get_num_threads() == 2


def test_imle_matching_and_steps_flush_denormals_and_restore_the_mode(can_flush):
    """T's dead units leave denormal weights and Adam moments, slow on x86 (threads.py); the stage flushes them
    while it maps noise and steps, and leaves the caller's mode as it was."""
    cfg = TrainConfig(latent_dim=8, noise_dim=8, imle_batch_size=16, imle_epochs=1, seed=0)
    codes = torch.nn.functional.normalize(torch.randn(64, 8), dim=1)
    spy = _ThreadSpy(MLP(8, 8, hidden=64, layers=2))
    trainer = IMLETrainer(codes, spy, cfg, get_ops("fused"))
    trainer.begin_epoch()
    trainer.train_step(trainer.epoch_batches()[0])
    assert spy.flushing == [True, True]
    assert not flushing_denormals()


_TRAIN = """
import hashlib, sys
if sys.argv[1] == "torch":
    import torch
    import glann_ext
else:
    import glann_ext
    import torch
from glann_testing import blob_images, tiny_config
from glann_ext.train import fit

images = torch.from_numpy(blob_images(96)).float().div(255).unsqueeze(1)
model = fit(images, tiny_config(threads=2, glo_epochs=1, imle_epochs=3, mapping_hidden=256, imle_batch_size=64))
digest = hashlib.sha256()
for t in [model.codes, *model.T.state_dict().values()]:
    digest.update(t.detach().contiguous().numpy().tobytes())
print(glann_ext.build_info()["omp_wait_policy"], digest.hexdigest())
"""


def test_the_model_does_not_depend_on_whether_torch_or_glann_ext_was_imported_first(tmp_path):
    """With torch first (OpenMP threads spinning), T's steps ran on two threads and the model differed from
    the CLI's in its last bits (found by the own-data audit)."""
    tests = os.pathsep.join([str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])])
    kwargs = child_kwargs(tmp_path, PYTHONPATH=tests)  # glann_testing importable in the child
    for name in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS"):  # each import order sets its own policy
        kwargs["env"].pop(name, None)
    out = {}
    for first in ("torch", "glann_ext"):
        done = subprocess.run(
            [sys.executable, "-c", _TRAIN, first],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
            **kwargs,
        )
        assert done.returncode == 0, done.stderr
        out[first] = done.stdout.split()
    assert out["torch"][0].startswith("default") and out["glann_ext"][0] == "PASSIVE"  # the two policies
    assert out["torch"][-1] == out["glann_ext"][-1]
