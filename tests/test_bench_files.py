"""The bench files run, and check what they time: one small CPU row of each under ``--benchmark-disable``
(in a subprocess, as a user runs them), and each row's check catches a deliberately wrong kernel output
before anything is timed (CI runs tests/, not benchmarks/)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import glann_ext
from benchmarks import bench_laplacian, bench_nn_argmin, bench_sphere
from glann_ext.ops import reference

ROOT = Path(__file__).resolve().parents[1]
FILES = ["bench_nn_argmin.py", "bench_laplacian.py", "bench_sphere.py", "bench_train_step.py"]
# One small CPU row of each timed function (the 7 ids listed in the test).
SMALL_ROWS = (
    "(cpu-4096x40960x64-glann_ext and not f64 and not 1thread) or (cpu-64x1x28x28-glann_ext and not loop)"
    " or cpu-batch128-glann_adam or cpu-1000000x64-glann_project_inplace or (step and cpu-glann_ext)"
)


def test_a_small_cpu_row_of_every_bench_file_runs_with_benchmark_disable(tmp_path) -> None:
    # as benchmarks/run_all.sh does: from a copy of benchmarks/ outside the source tree, so that the package
    # imported is the installed one (`python -m` puts the working directory first on sys.path, and the
    # source tree's glann_ext has no compiled module unless it was built in place)
    (tmp_path / "benchmarks").mkdir()
    for path in [*(ROOT / "benchmarks").glob("*.py"), ROOT / "pyproject.toml"]:
        shutil.copy(path, tmp_path / ("benchmarks" if path.suffix == ".py" else "") / path.name)
    env = dict(os.environ)
    if env.get("PYTHONPATH"):  # an in-place build named relative to the source tree stays importable
        env["PYTHONPATH"] = os.pathsep.join(
            str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep)
        )
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "--benchmark-disable"]
    cmd += [f"benchmarks/{f}" for f in FILES] + ["-k", SMALL_ROWS]
    done = subprocess.run(
        cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for row in [
        "bench_nn_argmin.py::bench_nn_argmin[cpu-4096x40960x64-glann_ext]",
        "bench_laplacian.py::test_fwd_bwd[cpu-64x1x28x28-glann_ext]",
        "bench_laplacian.py::test_per_sample_grads[cpu-64x1x28x28-glann_ext]",
        "bench_sphere.py::test_latent_step[cpu-batch128-glann_adam]",
        "bench_sphere.py::test_project[cpu-1000000x64-glann_project_inplace]",
        "bench_train_step.py::test_glo_step[cpu-glann_ext]",
        "bench_train_step.py::test_imle_step[cpu-glann_ext]",
    ]:
        assert f"PASSED benchmarks/{row}" in out, out
    assert "7 passed" in out, out


class DisabledBenchmark:
    """What pytest-benchmark's fixture is under ``--benchmark-disable``: ``pedantic`` calls its target once
    and records nothing (``stats`` is None). Counts the calls, so a test can see nothing was timed."""

    disabled = True
    stats = None

    def __init__(self) -> None:
        self.group, self.extra_info, self.pedantic_calls = None, {}, 0

    def pedantic(self, target, args=(), kwargs=None, setup=None, **_ignored):
        self.pedantic_calls += 1
        if setup is not None:
            setup()
        return target(*args, **(kwargs or {}))


# --- a wrong kernel output fails the row before pedantic, i.e. before the timing ------------------------------


def test_nn_argmin_row_rejects_a_wrong_index(monkeypatch) -> None:
    right = glann_ext.nn_argmin

    def wrong(q, k):
        idx = right(q, k).clone()
        idx[-1] = (idx[-1] + 1) % k.shape[0]  # the last query (a tail-handling bug)
        return idx

    bench = DisabledBenchmark()
    bench_nn_argmin.bench_nn_argmin(bench, "cpu", (300, 2000, 64), "glann_ext")  # the row as it is: passes
    assert bench.pedantic_calls == 1
    monkeypatch.setattr(glann_ext, "nn_argmin", wrong)
    bench = DisabledBenchmark()
    with pytest.raises(AssertionError, match=r"1 of \d+ checked queries have a wrong nearest key"):
        bench_nn_argmin.bench_nn_argmin(bench, "cpu", (300, 2000, 64), "glann_ext")
    assert bench.pedantic_calls == 0


def test_check_argmin_allows_ties_and_near_ties_only() -> None:
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(50, 16, generator=g), torch.randn(400, 16, generator=g)
    k[7] = k[3]  # an exact duplicate: either index is right
    q[0] = k[3]
    want = reference.nn_argmin_exact(q, k)
    check = bench_nn_argmin.check_argmin
    check(want, q, k, "float32")
    other = want.clone()
    other[0] = 7 if int(want[0]) == 3 else 3
    check(other, q, k, "float64")
    # a key 2e-7 further from query 1 than its nearest (relative): a float32 near-tie, not a float64 one
    qd, kd = q.double(), k.double()
    k2 = torch.cat([kd, (qd[1] + (kd[want[1]] - qd[1]) * (1 + 1e-7)).unsqueeze(0)])
    near = want.clone()
    near[1] = k2.shape[0] - 1
    check(near, qd, k2, "float32")
    with pytest.raises(AssertionError, match="wrong nearest key"):
        check(near, qd, k2, "float64")
    far = want.clone()
    far[5] = (want[5] + 1) % k.shape[0]
    with pytest.raises(AssertionError, match="wrong nearest key"):
        check(far, q, k, "bf16_scores")
    faiss_like = (None, want.unsqueeze(1).numpy())  # faiss's (distances, indices) pair
    check(faiss_like, q, k, "float32")


def _laplacian_rows(monkeypatch, loss_fn) -> None:
    """The fwd+bwd and the per-sample rows of glann_ext at the smallest CPU shape, with ``loss_fn`` as
    glann_ext's loss: each must raise before pedantic."""
    monkeypatch.setitem(bench_laplacian.IMPLS, "glann_ext", loss_fn)
    for row in (bench_laplacian.test_fwd_bwd, bench_laplacian.test_per_sample_grads):
        bench = DisabledBenchmark()
        with pytest.raises(AssertionError):
            row(bench, "cpu", (64, 1, 28, 28), "glann_ext")
        assert bench.pedantic_calls == 0


def test_laplacian_rows_pass_as_they_are_and_reject_a_wrong_loss(monkeypatch) -> None:
    for row in (bench_laplacian.test_fwd_bwd, bench_laplacian.test_per_sample_grads):
        bench = DisabledBenchmark()
        row(bench, "cpu", (64, 1, 28, 28), "glann_ext")
        assert bench.pedantic_calls == 1
    right = glann_ext.laplacian_pyramid_loss
    _laplacian_rows(monkeypatch, lambda x, y: right(x, y) * (1 + 1e-4))  # loss and gradient 1e-4 too large


def test_laplacian_rows_reject_a_wrong_gradient_at_one_pixel(monkeypatch) -> None:
    right = glann_ext.laplacian_pyramid_loss

    def wrong(x, y):  # the same loss; its gradient 0.01 / numel off at the last pixel (an edge bug)
        corner = x[..., -1, -1]
        return right(x, y) + 0.01 / x[0].numel() / x.shape[0] * (corner - corner.detach()).sum()

    _laplacian_rows(monkeypatch, wrong)


def test_laplacian_check_raises_on_a_perturbed_output() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 32, 32, generator=g, requires_grad=True)
    y = torch.randn(4, 3, 32, 32, generator=g)
    loss = glann_ext.laplacian_pyramid_loss(x, y)
    loss.backward()
    expected = bench_laplacian.Expected(x, y, per_sample=False)
    bench_laplacian.check_against_reference(loss, x.grad, expected)
    with pytest.raises(AssertionError, match="loss"):
        bench_laplacian.check_against_reference(loss * (1 + 1e-3), x.grad, expected)
    grad = x.grad.clone()
    grad[0, 0, 0, 0] *= 1.01
    with pytest.raises(AssertionError, match="gradient: 1 of"):
        bench_laplacian.check_against_reference(loss, grad, expected)
    grad[0, 0, 0, 0] = float("nan")
    with pytest.raises(AssertionError, match="gradient"):
        bench_laplacian.check_against_reference(loss, grad, expected)


def test_sphere_rows_reject_a_wrong_projection_and_a_wrong_step(monkeypatch) -> None:
    shape = (20_000, 64)
    for name in (
        "glann project_to_sphere",
        "glann project_to_sphere_ (in place)",
        "torch clone (memcpy bound)",
    ):
        bench = DisabledBenchmark()
        bench_sphere.test_project(bench, "cpu", shape, name)  # as they are: pass
        assert bench.pedantic_calls == 1

    def wrong(z):
        out = glann_ext.project_to_sphere(z)
        out[-1] *= 1.001  # the last row
        return out

    monkeypatch.setitem(bench_sphere.ALL_CASES, "glann project_to_sphere", ("glann_project", wrong))
    bench = DisabledBenchmark()
    with pytest.raises(AssertionError, match="projection"):
        bench_sphere.test_project(bench, "cpu", shape, "glann project_to_sphere")
    assert bench.pedantic_calls == 0
    with pytest.raises(AssertionError, match="copy differs"):
        bench_sphere.check_projection(wrong(torch.ones(5, 3)), torch.ones(5, 3), copy=True)

    name = "glann SphereSparseAdam.step"
    bench = DisabledBenchmark()
    bench_sphere.test_latent_step(bench, "cpu", 128, name)
    assert bench.pedantic_calls == 1

    def forgets_a_row(b, device):  # the step leaves the batch's last row alone
        opt = glann_ext.SphereSparseAdam(bench_sphere._unit(bench_sphere.N_CODES, bench_sphere.DIM, device))
        return bench_sphere.StepRow(
            b, device, lambda idx, g, _n: opt.step(idx[:-1], g[:-1]), lambda: opt.table
        )

    monkeypatch.setitem(bench_sphere.STEP_CASES, name, ("glann_adam", forgets_a_row))
    bench = DisabledBenchmark()
    with pytest.raises(AssertionError, match="latent table"):
        bench_sphere.test_latent_step(bench, "cpu", 128, name)
    assert bench.pedantic_calls == 0


def test_train_step_rows_reject_a_wrong_loss_and_a_wrong_match(monkeypatch) -> None:
    from benchmarks import bench_train_step
    from glann_ext.backend import get_ops

    for row in (bench_train_step.test_glo_step, bench_train_step.test_imle_step):
        bench = DisabledBenchmark()
        row(bench, "cpu", "glann_ext")  # as it is: passes
        assert bench.pedantic_calls == 1

    def wrong_ops(change):
        def ops(name):
            right = get_ops(name)
            return dataclasses.replace(right, **change(right)) if name == "fused" else right

        return ops

    def loss_off(right):  # the fused loss 1% too large: the loss's check sees it
        return {"lap_loss": lambda *a, **k: right.lap_loss(*a, **k) * 1.01}

    def gradient_off(right):  # the loss right, its gradient doubled: Adam's first update does not see it
        def lap_loss(*a, **k):
            loss = right.lap_loss(*a, **k)
            return loss + (loss - loss.detach())

        return {"lap_loss": lap_loss}

    def match_off(right):  # the fused search returns the second-nearest for one target in 64
        def nn(q, k, return_distances=False):
            idx, dist = right._nn_argmin(q, k, return_distances=True)
            idx[::64] = (idx[::64] + 1) % len(k)
            return (idx, dist) if return_distances else idx

        return {"_nn_argmin": nn}

    for row, change, match in (
        (bench_train_step.test_glo_step, loss_off, "loss"),
        (
            bench_train_step.test_glo_step,
            gradient_off,
            "gradient has cosine 1.000000 .* and 2.0000x its norm",
        ),
        (bench_train_step.test_imle_step, match_off, "the matching gives 32 of 2048 targets other noise"),
    ):
        monkeypatch.setattr(bench_train_step, "get_ops", wrong_ops(change))
        bench = DisabledBenchmark()
        with pytest.raises(AssertionError, match=match):
            row(bench, "cpu", "glann_ext")
        assert bench.pedantic_calls == 0
