"""The Hopper kernels of issue 15 (``GLANN_EXT_CUDA_KERNELS=hopper``) against the legacy kernels and the
references, in one process (``glann_ext.ops.kernels.use_cuda_kernels`` switches between them).

Each op is run under both variants on the same inputs: ties and near ties, strided, transposed and
channels-last inputs, odd D, the shapes where a Hopper kernel changes path (queries resident or streamed,
vector or scalar loads, whole-plane or tiled pyramids, register or two-pass rows) and where it must fall
back to the legacy kernel; then a side-stream and a CUDA-graph test per new kernel. The
``test_cuda_small_hopper_*`` tests run the Hopper kernels alone on small inputs: scripts/gpu_check.sh runs
them under compute-sanitizer (memcheck; racecheck on the shared-memory kernels). The existing CUDA suites run
on the Hopper kernels too: ``GLANN_EXT_CUDA_KERNELS=hopper pytest -m cuda`` (gpu_check's hopper stage).
"""

from __future__ import annotations

import pytest
import torch
from cuda_testing import DTYPES, capture, layout, loss_and_grads
from test_cuda_streams import check_on_side_stream

import glann_ext
from glann_ext.errors import NonFiniteError
from glann_ext.ops import reference
from glann_ext.ops.kernels import use_cuda_kernels

pytestmark = pytest.mark.cuda
CUDA = "cuda"
VARIANTS = ("legacy", "hopper")


def randn(*shape, dt="fp32", seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(CUDA, DTYPES[dt])


def both(fn, *args, **kwargs) -> dict:
    """``fn(*args, **kwargs)`` under each variant, results detached and synchronised."""
    out = {}
    for v in VARIANTS:
        with use_cuda_kernels(v):
            r = fn(*args, **kwargs)
            torch.cuda.synchronize()
        out[v] = tuple(t.detach() for t in r) if isinstance(r, tuple) else r.detach()
    return out


def kernel_names(fn) -> set[str]:
    """Names of the CUDA kernels ``fn()`` launches (torch.profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA}


def test_cuda_the_switch_switches():
    """On a device of compute capability 9.0 or newer, ``hopper`` launches the new kernels and ``legacy``
    the old ones (by the kernel names the profiler sees); build_info reports the choice."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the Hopper kernels run on compute capability 9.0 and newer")
    q, k, z = randn(300, 64), randn(5000, 64, seed=1), randn(1000, 64, seed=2)
    x, y = randn(4, 3, 64, 64), randn(4, 3, 64, 64, seed=3)
    ops = {
        "mma_argmin": lambda: glann_ext.nn_argmin(q, k),
        "plane_forward": lambda: glann_ext.laplacian_pyramid_loss(x, y),
        "project_vec": lambda: glann_ext.project_to_sphere(z),
    }
    for variant in VARIANTS:
        with use_cuda_kernels(variant):
            assert glann_ext.build_info()["cuda_kernels"] == variant
            for marker, fn in ops.items():
                names = " ".join(kernel_names(fn))
                assert (marker in names) == (variant == "hopper"), (variant, marker, names)


# --------------------------------------------------------------------------------------------------
# nn_argmin
# --------------------------------------------------------------------------------------------------


def assert_nearest(q, k, idx, dist=None, agree=0.99):
    """As tests/test_cuda_sizes.py: within the float32 rounding of the expansion; a share ``agree`` of the
    indices exact."""
    d = ((q.double()[:, None, :] - k.double()[None, :, :]) ** 2).sum(-1)
    rows = torch.arange(q.shape[0], device=q.device)
    chosen = d[rows, idx]
    scale = (q.double() ** 2).sum(1) + (k.double() ** 2).sum(1).max()
    assert bool(((chosen - d.min(1).values) <= 2e-6 * scale + 1e-12).all()), "a returned key is farther"
    assert (idx == d.argmin(1)).double().mean().item() >= agree
    if dist is not None:
        torch.testing.assert_close(dist.double(), chosen, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("how", ["contiguous", "strided", "transposed"])
@pytest.mark.parametrize("d", [1, 7, 8, 17, 64, 100, 256, 264, 784])
@pytest.mark.parametrize("dt", ["fp32", "fp16", "bf16"])
def test_cuda_nn_argmin_hopper_matches_legacy(dt, d, how):
    """Vector loads (contiguous, D a multiple of 8 bytes' worth) and the scalar loader (strided, transposed,
    odd D); resident queries (D*elem <= 512 bytes) and streamed ones; three equal keys and exact matches:
    the lowest index, under both variants; indices equal between the variants but for rounding near-ties."""
    n, m = 131, 517
    q, k = randn(n, d, dt=dt), randn(m, d, dt=dt, seed=1)
    k[300], k[516] = k[7], k[7]
    q[0], q[1] = k[7], k[515]
    res = both(glann_ext.nn_argmin, layout(q, how), layout(k, how), return_distances=True)
    first = [int((k == k[j]).all(1).nonzero()[0]) for j in (7, 515)]
    for v in VARIANTS:
        idx, dist = res[v]
        assert idx[:2].tolist() == first, v
        assert_nearest(q, k, idx, dist)
    assert (res["hopper"][0] == res["legacy"][0]).double().mean().item() >= 0.98


def test_cuda_nn_argmin_hopper_ties_across_splits_and_chunks():
    """Few queries and many keys: many splits (int32 in-split indices, merged by the shared rule); the same
    key planted in several splits and chunks resolves to its lowest index; folding chunks from key_offset
    equals one call."""
    q = randn(40, 64)
    k = randn(200_000, 64, seed=1)
    planted = [70_000, 3, 150_001, 199_999]
    for j in planted:
        k[j] = q[5]
    with use_cuda_kernels("hopper"):
        one = glann_ext.nn_argmin(q, k)
        chunked = glann_ext.nn_argmin(q, list(k.split(33_333)))
    assert one[5].item() == 3
    assert torch.equal(one, chunked)
    # (40 rows of random data: a near-tie within rounding is unlikely, not impossible)
    assert (one == both(glann_ext.nn_argmin, q, k)["legacy"]).sum().item() >= 39


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
def test_cuda_nn_argmin_hopper_near_ties(dt):
    """Keys one float32 ulp from a query's exact match (in bfloat16 they round back onto it: exact ties):
    every answer within the float32 bound of the expansion under both variants; which of the two near keys
    wins is rounding (nn_argmin's docstring), so the indices are not compared."""
    q = randn(64, 32, dt=dt)
    k = randn(4000, 32, dt=dt, seed=1)
    k[:64] = q
    k[64:128] = torch.nextafter(q.float(), torch.full_like(q.float(), float("inf"))).to(q.dtype)
    for idx in both(glann_ext.nn_argmin, q, k).values():
        assert_nearest(q.float(), k.float(), idx, agree=0.0)


def test_cuda_nn_argmin_hopper_glann_size_bf16():
    """GLANN-sized bf16 search: the Hopper answers agree with the legacy ones on >= 99.9% of the rows."""
    q, k = randn(4096, 64, dt="bf16"), randn(40960, 64, dt="bf16", seed=1)
    res = both(glann_ext.nn_argmin, q, k)
    assert (res["hopper"] == res["legacy"]).double().mean().item() >= 0.999


# --------------------------------------------------------------------------------------------------
# Laplacian
# --------------------------------------------------------------------------------------------------

LAP_SHAPES = [
    (3, 2, 28, 28),  # whole pyramid per block (j0 = 0)
    (2, 3, 64, 64),
    (1, 2, 128, 128),
    (2, 1, 1, 1),
    (1, 1, 5, 300),
    (1, 2, 256, 256),  # level-0 tiles, then a block per plane (j0 = 1)
    (2, 1, 200, 330),  # partial tiles
    (1, 1, 512, 512),  # too large: the legacy kernels run
]


@pytest.mark.parametrize("levels", [1, 3, 5])
@pytest.mark.parametrize("shape", LAP_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cuda_laplacian_hopper_matches_legacy_and_reference(shape, levels):
    x, y = randn(*shape), randn(*shape, seed=1)
    seed = torch.rand(shape[0], device=CUDA) + 0.5
    res = both(loss_and_grads, glann_ext.laplacian_pyramid_loss, x, y, seed, levels=levels)
    exact = loss_and_grads(
        reference.laplacian_pyramid_loss_reference, x.double(), y.double(), seed.double(), levels=levels
    )
    for v in VARIANTS:
        for mine, ref in zip(res[v], exact):
            torch.testing.assert_close(mine.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("how", ["contiguous", "strided", "channels_last", "expanded"])
@pytest.mark.parametrize("dt", ["fp32", "fp64", "fp16", "bf16"])
def test_cuda_laplacian_hopper_dtypes_layouts(dt, how):
    """Every dtype (fp64 in double, 16-bit in float) and input layout: hopper equals legacy up to summation
    order (float64: 1e-12)."""
    x = randn(2, 3, 37, 29, dt=dt)
    y = randn(2, 3, 37, 29, dt=dt, seed=1)
    if how == "expanded":
        y = y[:1].expand_as(y)
    else:
        x, y = layout(x, how), layout(y, how)
    seed = torch.rand(2, device=CUDA, dtype=torch.float64) + 0.5
    res = both(loss_and_grads, glann_ext.laplacian_pyramid_loss, x, y, seed)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dt == "fp64" else {"rtol": 1e-5, "atol": 1e-5}
    if dt in ("fp16", "bf16"):
        tol = {"rtol": 1e-2, "atol": 1e-2}
    for a, b in zip(res["hopper"], res["legacy"]):
        torch.testing.assert_close(a, b, **tol)


def test_cuda_laplacian_signs_pair_across_variants():
    """The sign layout is the legacy CUDA one: a Hopper forward with a legacy backward (and the other way
    round) gives the same gradient."""
    x, y = randn(2, 3, 64, 64).requires_grad_(), randn(2, 3, 64, 64, seed=1)
    grads = {}
    for fwd, bwd in (("hopper", "legacy"), ("legacy", "hopper"), ("hopper", "hopper")):
        with use_cuda_kernels(fwd):
            loss = glann_ext.laplacian_pyramid_loss(x, y)
        with use_cuda_kernels(bwd):
            (grads[fwd, bwd],) = torch.autograd.grad(loss, x)
    ref = grads["hopper", "hopper"]
    for g in grads.values():
        torch.testing.assert_close(g, ref, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# projection
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [4, 7, 64, 100, 784, 1024, 1028, 4100])
@pytest.mark.parametrize("dt", ["fp32", "fp64", "fp16", "bf16"])
def test_cuda_project_hopper_matches_legacy(dt, d):
    """Vector path (several rows per warp for small D, registers up to 8 vectors per lane, two passes past
    that) and the legacy fallback (D not a whole number of 16-byte vectors): within one unit in the last
    place of the legacy result (two in float64); zero, huge, tiny and non-finite rows as the legacy kernel
    treats them."""
    z = randn(300, d, dt="fp64", seed=4)
    big, small = (1e300, 1e-300) if dt == "fp64" else ((1e30, 1e-30) if dt == "fp32" else (3e3, 1e-3))
    z[1] = 0.0
    z[3] *= big
    z[4] *= small
    z = z.to(DTYPES[dt])
    res = both(glann_ext.project_to_sphere, z)
    # Each kernel is within one unit in the last place of z / |z|; float64 sums the squares in another
    # order per variant, so there the two differ by up to two units (H200: 4.4e-16 relative, 2.0 eps).
    eps = torch.finfo(z.dtype).eps * (2.5 if dt == "fp64" else 1.0)
    torch.testing.assert_close(res["hopper"], res["legacy"], rtol=eps, atol=0.0)
    bad = z.clone()
    bad[[7, 11]] = float("nan")
    for v in VARIANTS:
        with use_cuda_kernels(v):
            inplace = bad.clone()
            with pytest.raises(NonFiniteError) as err:
                glann_ext.project_to_sphere_(inplace)
                glann_ext.ops.raise_deferred_errors(wait=True)  # the kernel's flag is read later
        assert getattr(err.value, "row", 7) == 7
        assert torch.equal(inplace[7].isnan(), bad[7].isnan()) and torch.equal(
            inplace[11].isnan(), bad[11].isnan()
        )


def test_cuda_project_hopper_strided_and_inplace():
    """Strided rows (every other column) take the legacy kernel; aligned in-place rows the vector one."""
    wide = randn(500, 129)
    strided = wide[:, 1::2]
    res = both(glann_ext.project_to_sphere, strided)
    torch.testing.assert_close(res["hopper"], res["legacy"], rtol=0, atol=0)
    z = randn(500, 64)
    for v in VARIANTS:
        with use_cuda_kernels(v):
            zi = z.clone()
            glann_ext.project_to_sphere_(zi)
        torch.testing.assert_close(zi, reference.project_to_sphere_reference(z), rtol=3e-7, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# small inputs for compute-sanitizer (Hopper kernels only; the legacy ones: tests/test_cuda_sizes.py)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["contiguous", "strided"], ids=["vector", "scalar"])
@pytest.mark.parametrize("dt", ["fp32", "fp16", "bf16"])
def test_cuda_small_hopper_nn_argmin(dt, how):
    """The cp.async (vector) and scalar loaders, a partial last tile and query block, resident (D = 64)
    queries; exact duplicates resolve to the lowest index: copies of key 7 in the same 128-key tile reach
    each tie-break of the kernel (15: the same thread's next n-tile; 9: another lane of its quad; 40:
    another warp's columns), 300 a later tile."""
    q, k = randn(131, 64, dt=dt), randn(517, 64, dt=dt, seed=1)
    for copy in (9, 15, 40, 300):
        k[copy] = k[7]
    q[0] = k[7]
    with use_cuda_kernels("hopper"):
        idx = glann_ext.nn_argmin(layout(q, how), layout(k, how))
    assert idx[0].item() == 7
    assert_nearest(q, k, idx)


def test_cuda_small_hopper_nn_argmin_streamed_queries():
    """D = 300 float32 (1200-byte rows): queries streamed through the pipeline with the keys."""
    q, k = randn(131, 300), randn(517, 300, seed=1)
    with use_cuda_kernels("hopper"):
        idx = glann_ext.nn_argmin(q, k)
    assert_nearest(q, k, idx)


SMALL_FUSED = [  # (dtype, shape): the plane kernels, whole tiles, then the tile paths' edges
    *((dt, shape) for dt in ("fp32", "fp16") for shape in ((2, 3, 28, 28), (1, 1, 256, 256))),
    ("fp32", (2, 1, 200, 330)),  # partial tiles on both sides: the clamped windows
    ("fp32", (1, 1, 5, 8000)),  # the lowest plane the tiles take (their halo's reflection needs 5 rows)
    ("fp64", (1, 2, 128, 128)),  # float64 tiles: twice the shared memory
]


@pytest.mark.parametrize(
    ("dt", "shape"), SMALL_FUSED, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v
)
def test_cuda_small_hopper_laplacian(dt, shape):
    x, y = randn(*shape, dt=dt), randn(*shape, dt=dt, seed=1)
    seed = torch.rand(shape[0], device=CUDA) + 0.5
    with use_cuda_kernels("hopper"):
        got = loss_and_grads(glann_ext.laplacian_pyramid_loss, x, y, seed)
    exact = loss_and_grads(reference.laplacian_pyramid_loss_reference, x.double(), y.double(), seed.double())
    tol = {"fp32": {"rtol": 1e-5, "atol": 1e-6}, "fp64": {"rtol": 1e-10, "atol": 1e-12}}.get(
        dt, {"rtol": 1e-2, "atol": 1e-3}
    )
    for mine, ref in zip(got, exact):
        torch.testing.assert_close(mine.double(), ref, **tol)


@pytest.mark.parametrize("d", [64, 2048])
@pytest.mark.parametrize("dt", ["fp32", "fp16"])
def test_cuda_small_hopper_project(dt, d):
    z = randn(100, d, dt=dt)
    z[3] = 0.0
    with use_cuda_kernels("hopper"):
        out = glann_ext.project_to_sphere(z)
    ref = reference.project_to_sphere_reference(z.double())
    torch.testing.assert_close(out.double(), ref, rtol=torch.finfo(z.dtype).eps, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# streams and graphs, each new kernel
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def hopper():
    with use_cuda_kernels("hopper"):
        yield


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
def test_cuda_hopper_side_stream_nn_argmin(hopper, dt):
    def op(q, k):
        return glann_ext.nn_argmin(q, k, return_distances=True, check_finite_values=False)

    real = (randn(700, 64, dt=dt), randn(30000, 64, dt=dt, seed=1))
    poison = (randn(700, 64, dt=dt, seed=2), randn(30000, 64, dt=dt, seed=3))
    check_on_side_stream(op, real, poison)


@pytest.mark.parametrize("shape", [(8, 3, 64, 64), (2, 3, 256, 256)], ids=["plane", "tiles"])
def test_cuda_hopper_side_stream_laplacian(hopper, shape):
    seed = torch.rand(shape[0], device=CUDA) + 0.5

    def op(x, y):
        return loss_and_grads(glann_ext.laplacian_pyramid_loss, x, y, seed, check_finite_values=False)

    check_on_side_stream(
        op, (randn(*shape), randn(*shape, seed=1)), (randn(*shape, seed=2), randn(*shape, seed=3))
    )


def test_cuda_hopper_side_stream_project(hopper):
    check_on_side_stream(glann_ext.project_to_sphere_, (randn(4096, 64),), (randn(4096, 64, seed=1),))


def test_cuda_hopper_graphs(hopper):
    """nn_argmin, the Laplacian loss forward and backward (both paths) and the projection, each captured once
    under the Hopper kernels and replayed on new inputs, against the references."""
    q_s, k_s, z_s = randn(300, 64), randn(5000, 64, seed=1), randn(1000, 64, seed=2)
    x_s, y_s = randn(2, 3, 256, 256).requires_grad_(), randn(2, 3, 256, 256, seed=3)
    w_s = randn(1, 3, 32, 32).requires_grad_()
    v_s = randn(1, 3, 32, 32, seed=4)

    def step():
        idx = glann_ext.nn_argmin(q_s, k_s, check_finite_values=False)
        out = glann_ext.project_to_sphere(z_s)
        big = glann_ext.laplacian_pyramid_loss(x_s, y_s, reduction="sum", check_finite_values=False)
        small = glann_ext.laplacian_pyramid_loss(w_s, v_s, reduction="sum", check_finite_values=False)
        return (idx, out, big, small, *torch.autograd.grad(big + small, (x_s, w_s)))

    graph, out = capture(step)
    for s in (10, 20):
        new = [randn(*t.shape, seed=s + i) for i, t in enumerate((q_s, k_s, z_s, x_s, y_s, w_s, v_s))]
        with torch.no_grad():
            for dst, src in zip((q_s, k_s, z_s, x_s, y_s, w_s, v_s), new):
                dst.copy_(src)
        graph.replay()
        torch.cuda.synchronize()
        q, k, z, x, y, w, v = new
        assert (out[0] == reference.nn_argmin_exact(q, k)).double().mean().item() >= 0.99
        torch.testing.assert_close(
            out[1].double(), reference.project_to_sphere_reference(z.double()), rtol=3e-7, atol=1e-7
        )
        for got, (a, b), g in ((out[2], (x, y), out[4]), (out[3], (w, v), out[5])):
            ad = a.double().requires_grad_()
            ref = reference.laplacian_pyramid_loss_reference(ad, b.double(), reduction="sum")
            (ref_g,) = torch.autograd.grad(ref, ad)
            torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(g.double(), ref_g, rtol=1e-5, atol=1e-6)
