"""Every op under ``torch.compile(fullgraph=True)`` with its NaN/Inf check on (the default): no graph break
(fullgraph raises on one), the eager values and gradients, and the check still raising from the compiled
function. The checks run inside the registered ops (the kernels flag what they read), so dynamo sees one
opaque op and no data-dependent Python. ``aot_eager`` runs dynamo, the fake implementations and AOTAutograd
without a C++ compile; CUDA-graph capture of the checked ops is in tests/test_cuda_streams.py."""

from __future__ import annotations

import pytest
import torch

import glann_ext
from glann_ext.errors import NonFiniteError
from glann_ext.ops import reference


def _compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, backend="aot_eager", fullgraph=True)


def _graph_breaks(fn, *args) -> int:
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args).graph_break_count


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nn_argmin_fullgraph(dtype):
    def search(q, k):
        return glann_ext.nn_argmin(q, k, return_distances=True)

    q, k = torch.randn(40, 8, dtype=dtype), torch.randn(500, 8, dtype=dtype)
    assert _graph_breaks(search, q, k) == 0
    fn = _compiled(search)
    got, want = fn(q, k), search(q, k)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    chunked = _compiled(lambda q, k: glann_ext.nn_argmin(q, [k[:100], k[100:]]))
    assert torch.equal(chunked(q, k), want[0])
    k[123, 4] = float("nan")
    with pytest.raises(NonFiniteError, match="keys row 123"):
        fn(q, k)


@pytest.mark.parametrize("weights", [None, [1.0, 0.5, 2.0]])
def test_laplacian_forward_backward_fullgraph(weights):
    def loss(x, y):
        return glann_ext.laplacian_pyramid_loss(x, y, levels=3, level_weights=weights, reduction="sum")

    x, y = torch.randn(3, 2, 12, 10, requires_grad=True), torch.randn(3, 2, 12, 10)
    assert _graph_breaks(loss, x, y) == 0
    fn = _compiled(loss)
    got = fn(x, y)
    (g,) = torch.autograd.grad(got, x)
    x2 = x.detach().clone().requires_grad_()
    want = loss(x2, y)
    (g2,) = torch.autograd.grad(want, x2)
    assert torch.equal(got, want) and torch.equal(g, g2)
    ref = reference.laplacian_pyramid_loss_reference(x.double(), y.double(), levels=3, level_weights=weights)
    torch.testing.assert_close(got.double() / x.numel(), ref, rtol=1e-5, atol=1e-6)
    bad = y.clone()
    bad[2, 1, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"y sample 2 \(batch index\)"):
        fn(x, bad)


def test_project_forward_backward_and_in_place_fullgraph():
    def project(z):
        return glann_ext.project_to_sphere(z)

    z = torch.randn(30, 7, dtype=torch.float64, requires_grad=True)
    assert _graph_breaks(project, z) == 0
    fn = _compiled(project)
    got = fn(z)
    (g,) = torch.autograd.grad(got, z, torch.ones_like(got))
    z2 = z.detach().clone().requires_grad_()
    want = project(z2)
    (g2,) = torch.autograd.grad(want, z2, torch.ones_like(want))
    assert torch.equal(got, want) and torch.equal(g, g2)

    def in_place(t):
        glann_ext.project_to_sphere_(t)
        return t * 1

    t = torch.randn(30, 7)
    out = _compiled(in_place)(t.clone())
    assert torch.equal(out, glann_ext.project_to_sphere(t))
    bad = torch.randn(30, 7)
    bad[9, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="z row 9"):
        fn(bad)


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_latent_steps_fullgraph(opt):
    def step(table, m, v, idx, grad):
        if opt == "adam":
            glann_ext.fused_latent_adam_(table, m, v, idx, grad, step=1, lr=0.1)
        else:
            glann_ext.fused_latent_sgd_(table, idx, grad, lr=0.1)

    table = torch.nn.functional.normalize(torch.randn(50, 6), dim=1)
    args = [
        table,
        torch.zeros_like(table),
        torch.zeros_like(table),
        torch.tensor([3, 7, 7, 40]),
        torch.randn(4, 6),
    ]
    compiled_args = [a.clone() for a in args]
    _compiled(step)(*compiled_args)
    step(*args)
    for got, want in zip(compiled_args[:3], args[:3]):
        assert torch.equal(got, want)
    bad = args[4].clone()
    bad[2, 1] = float("inf")
    with pytest.raises(NonFiniteError, match="grad row 2"):
        _compiled(step)(*compiled_args[:4], bad)


_TRANSFORMED = {
    "laplacian": (
        lambda a: glann_ext.laplacian_pyramid_loss(a, torch.zeros_like(a) + 0.5),
        lambda: torch.rand(4, 1, 8, 8, dtype=torch.float64),
    ),
    "nn_argmin": (
        lambda a: glann_ext.nn_argmin(a, torch.arange(40.0).double().reshape(5, 8), return_distances=True)[
            1
        ].sum(),
        lambda: torch.randn(4, 8, dtype=torch.float64) * 10,
    ),
    "project_to_sphere": (
        lambda a: (glann_ext.project_to_sphere(a) * torch.arange(8.0).double()).sum(),
        lambda: torch.randn(4, 8, dtype=torch.float64),
    ),
}


# dynamo's notes on the untraceable calls it meets before running the transform eagerly (documented)
@pytest.mark.filterwarnings("ignore:Dynamo:UserWarning")
@pytest.mark.parametrize("transform", ["grad", "vmap_grad"])
@pytest.mark.parametrize("op", sorted(_TRANSFORMED))
def test_compile_over_func_transforms_gives_the_eager_result(op, transform):
    """``torch.compile(torch.func.grad(f))`` and per-sample ``vmap(grad(f))``: dynamo breaks the graph at the
    op and runs the transform eagerly (before, the registered op's formula was traced under the transform and
    refused: "must override the setup_context")."""
    f, make = _TRANSFORMED[op]
    g = torch.func.grad(f) if transform == "grad" else torch.func.vmap(torch.func.grad(lambda a: f(a[None])))
    x = make()
    want = g(x)
    torch._dynamo.reset()
    got = torch.compile(g, backend="aot_eager")(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert float(want.abs().sum()) > 0
