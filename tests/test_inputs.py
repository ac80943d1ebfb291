"""Inputs as users have them: numpy arrays in (numpy out), float64, and float16/bfloat16 on the CPU refused
with the conversion to make. Every result is compared with the op on the equivalent tensors, which the
kernel tests compare with their oracles."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import glann_ext
from glann_ext.errors import NonFiniteError
from glann_ext.ops import reference


def _layouts(a: np.ndarray) -> dict[str, np.ndarray]:
    """The same values as C-ordered, Fortran-ordered, sliced, negatively strided, read-only and big-endian
    arrays, and as a field of a structured array (strides that are not whole elements: torch cannot view
    it, and raised its own error that named no argument)."""
    ro = a.copy()
    ro.flags.writeable = False
    wide = np.repeat(a, 2, axis=-1)
    records = np.zeros(a.shape[:-1], dtype=[("flag", "i1"), ("values", a.dtype, (a.shape[-1],))])
    records["values"] = a
    return {
        "c": np.ascontiguousarray(a),
        "fortran": np.asfortranarray(a),
        "sliced": wide[..., ::2],
        "negative_strides": np.flip(np.flip(a, -1).copy(), -1),
        "read_only": ro,
        "big_endian": a.astype(a.dtype.newbyteorder(">")),
        "field": records["values"],
    }


# ------------------------------------------------------------------------------------------- nn_argmin


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", list(_layouts(np.zeros((2, 2))).keys()))
def test_nn_argmin_numpy_in_numpy_out(dtype, layout):
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((37, 9)).astype(dtype), rng.standard_normal((501, 9)).astype(dtype)
    qa, ka = _layouts(q)[layout], _layouts(k)[layout]
    assert np.array_equal(qa, q) and np.array_equal(ka, k)
    idx, dist = glann_ext.nn_argmin(qa, ka, return_distances=True)
    assert isinstance(idx, np.ndarray) and isinstance(dist, np.ndarray)
    assert idx.dtype == np.int64 and dist.dtype == dtype and idx.shape == dist.shape == (37,)
    want, want_dist = glann_ext.nn_argmin(torch.from_numpy(q), torch.from_numpy(k), return_distances=True)
    assert np.array_equal(idx, want.numpy()) and np.array_equal(dist, want_dist.numpy())
    only = glann_ext.nn_argmin(qa, ka)
    assert isinstance(only, np.ndarray) and np.array_equal(only, idx)


def test_nn_argmin_numpy_keys_in_chunks_and_mixed():
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((20, 5)), rng.standard_normal((300, 5))
    want = reference.nn_argmin_exact(torch.from_numpy(q), torch.from_numpy(k)).numpy()
    assert np.array_equal(glann_ext.nn_argmin(q, np.array_split(k, 4)), want)
    assert np.array_equal(glann_ext.nn_argmin(q, (c for c in np.array_split(k, 3))), want)
    # Tensor queries with numpy keys: tensors out (the output type follows the queries).
    out = glann_ext.nn_argmin(torch.from_numpy(q), [torch.from_numpy(k[:100]), k[100:]])
    assert isinstance(out, torch.Tensor) and np.array_equal(out.numpy(), want)


def test_nn_argmin_numpy_errors_name_the_argument():
    q = np.random.default_rng(2).standard_normal((6, 3))
    k = np.random.default_rng(3).standard_normal((40, 3))
    k[17, 1] = np.nan
    with pytest.raises(NonFiniteError, match="keys row 17") as info:
        glann_ext.nn_argmin(q, k)
    assert info.value.row == 17
    chunks = [k[:10], k[10:]]
    with pytest.raises(NonFiniteError, match=r"keys\[1\] row 7"):
        glann_ext.nn_argmin(q, chunks)
    with pytest.raises(TypeError, match="queries must be a numpy array of floats, got dtype <U1"):
        glann_ext.nn_argmin(np.array([["a"]]), k)
    with pytest.raises(ValueError, match="queries must be a 2-D tensor"):
        glann_ext.nn_argmin(q[0], k)
    with pytest.raises(TypeError, match="queries must have dtype in"):
        glann_ext.nn_argmin(np.ones((2, 3), dtype=np.int64), np.ones((2, 3), dtype=np.int64))
    # np.longdouble is a float kind that torch has no type for: torch's own TypeError named no argument
    if np.dtype(np.longdouble).itemsize > 8:  # float64 on some platforms
        with pytest.raises(
            TypeError, match=rf"keys must be a numpy array of floats, got dtype {np.dtype(np.longdouble)}"
        ):
            glann_ext.nn_argmin(q, k.astype(np.longdouble))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 25),
    m=st.integers(1, 200),
    d=st.integers(1, 12),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_nn_argmin_numpy_integer_data(n, m, d, dtype, seed):
    """Small integers: exact in both dtypes, so ties are exact ties and the lowest index wins."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-3, 4, (n, d)).astype(dtype)
    k = rng.integers(-3, 4, (m, d)).astype(dtype)
    want = reference.nn_argmin_exact(torch.from_numpy(q), torch.from_numpy(k)).numpy()
    assert np.array_equal(glann_ext.nn_argmin(q, k), want)


# ------------------------------------------------------------------------------ laplacian_pyramid_loss


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("layout", ["c", "fortran", "sliced", "read_only", "big_endian", "field"])
def test_laplacian_numpy_in_numpy_out(dtype, reduction, layout):
    rng = np.random.default_rng(4)
    x, y = (
        rng.standard_normal((3, 2, 17, 20)).astype(dtype),
        rng.standard_normal((3, 2, 17, 20)).astype(dtype),
    )
    got = glann_ext.laplacian_pyramid_loss(_layouts(x)[layout], y, reduction=reduction)
    want = glann_ext.laplacian_pyramid_loss(torch.from_numpy(x), torch.from_numpy(y), reduction=reduction)
    assert isinstance(got, np.ndarray) and got.dtype == dtype and got.shape == tuple(want.shape)
    assert np.array_equal(got, want.numpy())
    weights = [1.0, 0.5, 0.25, 2.0]
    got_w = glann_ext.laplacian_pyramid_loss(x, y, levels=4, level_weights=weights, reduction=reduction)
    want_w = reference.laplacian_pyramid_loss_reference(
        torch.from_numpy(x).double(),
        torch.from_numpy(y).double(),
        levels=4,
        level_weights=weights,
        reduction=reduction,
    )
    np.testing.assert_allclose(got_w, want_w.numpy(), rtol=2e-5 if dtype == np.float32 else 1e-12)


def test_laplacian_numpy_for_either_argument_gives_numpy():
    """A numpy y with a tensor x (or the other way round) gives the numpy loss too; found by mutation testing:
    looking at x alone refused a numpy y as not a tensor, and no test mixed them."""
    rng = np.random.default_rng(6)
    x, y = (
        rng.standard_normal((2, 1, 9, 8)).astype(np.float32),
        rng.standard_normal((2, 1, 9, 8)).astype(np.float32),
    )
    want = glann_ext.laplacian_pyramid_loss(
        torch.from_numpy(x), torch.from_numpy(y), reduction="none"
    ).numpy()
    for a, b in ((torch.from_numpy(x), y), (x, torch.from_numpy(y))):
        got = glann_ext.laplacian_pyramid_loss(a, b, reduction="none")
        assert isinstance(got, np.ndarray) and np.array_equal(got, want)


def test_laplacian_numpy_nan_names_the_argument():
    x, y = np.zeros((3, 1, 8, 8), np.float32), np.zeros((3, 1, 8, 8), np.float32)
    y[2, 0, 1, 1] = np.inf
    with pytest.raises(NonFiniteError, match=r"y sample 2 \(batch index\)"):
        glann_ext.laplacian_pyramid_loss(x, y)


def test_raise_deferred_errors_wait_must_be_a_bool():
    """wait="no" was read as its truth value (and so waited)."""
    glann_ext.ops.raise_deferred_errors(wait=np.True_)
    for value in ("no", 1, None):
        message = rf"^raise_deferred_errors: wait must be a bool, got {type(value).__name__} {value!r}$"
        with pytest.raises(TypeError, match=message):
            glann_ext.ops.raise_deferred_errors(wait=value)


# ------------------------------------------------------------------------------------------ projection


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", list(_layouts(np.zeros((2, 2))).keys()))
def test_project_numpy(dtype, layout):
    z = np.random.default_rng(5).standard_normal((50, 7)).astype(dtype)
    z[3] = 0
    za = _layouts(z)[layout]
    out = glann_ext.project_to_sphere(za)
    assert isinstance(out, np.ndarray) and out.dtype == dtype
    want = glann_ext.project_to_sphere(torch.from_numpy(z)).numpy()
    assert np.array_equal(out, want) and np.array_equal(za, z)  # the input is untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_project_numpy_in_place(dtype):
    z = np.random.default_rng(6).standard_normal((40, 70)).astype(dtype)
    want = glann_ext.project_to_sphere(torch.from_numpy(z)).numpy()
    wide = np.repeat(z, 2, axis=1)
    view = wide[:, ::2]  # a strided view: written through, not copied
    assert glann_ext.project_to_sphere_(view) is view
    assert np.array_equal(view, want) and np.array_equal(wide[:, 1::2], z)
    bad = z.copy()
    bad[[4, 9]] = np.nan
    before = bad.copy()
    with pytest.raises(NonFiniteError, match="z row 4"):
        glann_ext.project_to_sphere_(bad)
    assert np.array_equal(bad[[4, 9]], before[[4, 9]], equal_nan=True)
    assert np.array_equal(np.delete(bad, [4, 9], 0), np.delete(want, [4, 9], 0))


@pytest.mark.parametrize("layout", ["read_only", "negative_strides", "big_endian", "field"])
def test_project_numpy_in_place_refuses_what_it_cannot_write(layout):
    z = _layouts(np.ones((4, 3)))[layout]
    if layout == "negative_strides":
        z = np.ones((4, 3))[:, ::-1]
    with pytest.raises(ValueError, match="in-place op"):
        glann_ext.project_to_sphere_(z)


# ------------------------------------------------------------------------------- 16-bit floats on CPU


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_on_cpu_is_refused_with_what_to_do(dtype):
    name = str(dtype).replace("torch.", "")
    with pytest.raises(TypeError, match=rf"{name}.*CUDA only.*\.float\(\)"):
        glann_ext.nn_argmin(torch.randn(3, 4, dtype=dtype), torch.randn(5, 4, dtype=dtype))
    with pytest.raises(TypeError, match=rf"{name}.*CUDA only.*\.float\(\)"):
        glann_ext.laplacian_pyramid_loss(
            torch.randn(1, 1, 4, 4, dtype=dtype), torch.randn(1, 1, 4, 4, dtype=dtype)
        )
    with pytest.raises(TypeError, match=rf"convert with \.float\(\)\), got {name}"):
        glann_ext.project_to_sphere(torch.randn(3, 4, dtype=dtype))


def test_sparse_inputs_are_refused_naming_the_argument_and_the_conversion():
    """Sparse COO tensors met torch's dispatcher errors ("Could not run 'aten::linalg_vector_norm' ...
    SparseCPU", "Cannot access data pointer") that named no argument."""
    q, k = torch.randn(3, 4), torch.randn(6, 4)
    x = torch.rand(2, 1, 8, 8)
    cases = [
        ("queries", lambda: glann_ext.nn_argmin(q.to_sparse(), k)),
        ("keys", lambda: glann_ext.nn_argmin(q, k.to_sparse())),
        ("x", lambda: glann_ext.laplacian_pyramid_loss(x.to_sparse(), x.to_sparse())),
        ("y", lambda: glann_ext.laplacian_pyramid_loss(x, x.to_sparse())),
        ("z", lambda: glann_ext.project_to_sphere(q.to_sparse())),
    ]
    for name, call in cases:
        with pytest.raises(
            TypeError, match=rf"{name} must be a dense \(strided\) tensor, got layout sparse_coo"
        ):
            call()


def test_documented_errors_and_gradients_match_behaviour():
    """Docstrings said a 1-D/3-D z raises TypeError (it is ValueError) and did not say that the loss refuses
    empty inputs or that nn_argmin's distances carry gradients; each statement is checked here."""
    assert "ValueError: ``z`` is not 2-D." in glann_ext.project_to_sphere.__doc__
    for z in (torch.randn(5), torch.randn(2, 3, 4)):
        with pytest.raises(ValueError, match="z must be a 2-D tensor"):
            glann_ext.project_to_sphere(z)
    assert "an empty batch raises ``ValueError``" in glann_ext.laplacian_pyramid_loss.__doc__
    for shape in ((0, 1, 4, 4), (2, 0, 4, 4), (2, 1, 0, 4)):
        # The reference loss gave NaN for B=0; it now refuses empty inputs like the fused loss.
        for loss in (glann_ext.laplacian_pyramid_loss, reference.laplacian_pyramid_loss_reference):
            with pytest.raises(ValueError, match=r"x must not be empty, got shape"):
                loss(torch.zeros(shape), torch.zeros(shape))
    assert "``sq_distance``\n        is differentiable" in glann_ext.nn_argmin.__doc__
    q = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    index, dist = glann_ext.nn_argmin(q, k, return_distances=True)
    gq, gk = torch.autograd.grad(dist.sum(), (q, k))
    diff = (q - k[index]).detach()
    torch.testing.assert_close(gq, 2 * diff)
    torch.testing.assert_close(gk, torch.zeros_like(k).index_add_(0, index, -2 * diff))


@pytest.mark.filterwarnings("error:There is a performance drop:UserWarning")  # vmap's rules, not the fallback
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # in torch's jvp
def test_torch_func_grad_jacrev_and_vmap_match_the_pure_pytorch_references():
    """torch.func.grad over the loss and the projection failed with torch's "must override setup_context"
    error (neither the eager Function nor register_autograd is a form functorch accepts). They now run
    through a setup_context Function under a transform: grad, jacrev and per-sample gradients (vmap of grad)
    equal the references' in float64; forward mode is refused by torch."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 9, 11, dtype=torch.float64, generator=gen)
    y = torch.randn(3, 2, 9, 11, dtype=torch.float64, generator=gen)
    lap = lambda a, b: glann_ext.laplacian_pyramid_loss(a, b, levels=3)  # noqa: E731
    ref = lambda a, b: reference.laplacian_pyramid_loss_reference(a, b, levels=3)  # noqa: E731
    for ours, want in [
        (torch.func.grad(lap, argnums=(0, 1))(x, y), torch.func.grad(ref, argnums=(0, 1))(x, y)),
        (
            torch.func.jacrev(lambda a: glann_ext.laplacian_pyramid_loss(a, y, levels=3, reduction="none"))(
                x
            ),
            torch.func.jacrev(
                lambda a: reference.laplacian_pyramid_loss_reference(a, y, levels=3, reduction="none")
            )(x),
        ),
        (
            torch.func.vmap(torch.func.grad(lambda a, b: lap(a[None], b[None])))(x, y),
            torch.func.vmap(torch.func.grad(lambda a, b: ref(a[None], b[None])))(x, y),
        ),
    ]:
        for a, b in zip(
            ours if isinstance(ours, tuple) else (ours,), want if isinstance(want, tuple) else (want,)
        ):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    z = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    z[2] *= 1e-3
    torch.testing.assert_close(
        torch.func.jacrev(glann_ext.project_to_sphere)(z),
        torch.func.jacrev(reference.project_to_sphere_reference)(z),
    )
    torch.testing.assert_close(
        torch.func.vmap(glann_ext.project_to_sphere)(z[:, None]),
        reference.project_to_sphere_reference(z)[:, None],
    )
    torch.testing.assert_close(
        torch.func.vmap(torch.func.grad(lambda r: glann_ext.project_to_sphere(r[None]).sum()))(z),
        torch.func.vmap(torch.func.grad(lambda r: reference.project_to_sphere_reference(r[None]).sum()))(z),
    )
    with pytest.raises(NotImplementedError, match="jvp"):
        torch.func.jvp(lambda a: lap(a, y), (x,), (torch.ones_like(x),))
    # Outside a transform the eager path is unchanged: the same gradient through torch.autograd.grad.
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(lap(xr, y), xr)
    torch.testing.assert_close(g, torch.func.grad(ref)(x, y), rtol=1e-12, atol=1e-15)


@pytest.mark.filterwarnings("error:There is a performance drop:UserWarning")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_vmap_of_the_loss_flattens_the_batches_into_one_call(reduction):
    """torch.vmap ran the loss and its backward once per batch entry through torch's fallback (with a
    "performance drop" warning, an error here). The batching rules flatten the entries into one call of
    per-sample losses and reduce each entry after: the values and gradients of a loop over the entries,
    with y batched or shared (in_dims None), the batch dimension anywhere, and jacrev (a vmapped backward
    of one unbatched forward, whose signs are read in the shape that wrote them)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 2, 9, 11, dtype=torch.float64, generator=gen)
    y = torch.randn(4, 3, 2, 9, 11, dtype=torch.float64, generator=gen)

    def ours(a, b):
        return glann_ext.laplacian_pyramid_loss(a, b, levels=3, reduction=reduction)

    def ref(a, b):
        return reference.laplacian_pyramid_loss_reference(a, b, levels=3, reduction=reduction)

    def total(t):
        return t.sum() if reduction == "none" else t

    for in_dims in ((0, 0), (0, None)):
        b = y if in_dims[1] == 0 else y[0]
        entries = [(x[i], b[i] if in_dims[1] == 0 else b) for i in range(4)]
        want = torch.stack([ref(*e) for e in entries])
        torch.testing.assert_close(torch.func.vmap(ours, in_dims=in_dims)(x, b), want, rtol=1e-12, atol=0)
        step = torch.func.grad(lambda p, q: total(ours(p, q)), argnums=(0, 1))
        grads = torch.func.vmap(step, in_dims=in_dims)(x, b)
        for arg in (0, 1):
            want = torch.stack([torch.func.grad(lambda *t: total(ref(*t)), argnums=arg)(*e) for e in entries])
            torch.testing.assert_close(grads[arg], want, rtol=1e-12, atol=1e-18)
    moved = torch.func.vmap(ours, in_dims=(2, 2))(x.movedim(0, 2), y.movedim(0, 2))
    torch.testing.assert_close(moved, torch.func.vmap(ours)(x, y), rtol=1e-12, atol=0)
    jac = torch.func.jacrev(lambda p: ours(p, y[0]))(x[0])
    torch.testing.assert_close(jac, torch.func.jacrev(lambda p: ref(p, y[0]))(x[0]), rtol=1e-12, atol=1e-18)


@pytest.mark.filterwarnings("error:There is a performance drop:UserWarning")
def test_vmap_of_the_projection_is_one_call_over_the_flattened_tables():
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(5, 6, 4, dtype=torch.float64, generator=gen)
    z[1, 2] = 0.0  # a zero row: (1, ..., 1) / sqrt(D), as outside vmap
    want = torch.stack([glann_ext.project_to_sphere(t) for t in z])
    torch.testing.assert_close(torch.func.vmap(glann_ext.project_to_sphere)(z), want, rtol=0, atol=0)
    got = torch.func.vmap(glann_ext.project_to_sphere, in_dims=1, out_dims=1)(z.transpose(0, 1))
    torch.testing.assert_close(got, want.transpose(0, 1), rtol=0, atol=0)
    nested = torch.func.vmap(torch.func.vmap(glann_ext.project_to_sphere))(z[:, :, None])
    torch.testing.assert_close(nested, want[:, :, None], rtol=0, atol=0)
    with pytest.raises(
        ValueError, match=r"^project_to_sphere: z must be a 2-D tensor, got 1-D with shape \(4,\)"
    ):
        torch.func.vmap(glann_ext.project_to_sphere)(z[0])


@pytest.mark.parametrize("split", [None, "list", "generator"])
def test_nn_argmin_distances_under_torch_func_grad(split):
    """torch.func.grad over nn_argmin's distance failed (the in-place fold op has no autograd formula).
    Under a transform each chunk is searched on the unwrapped tensors and folded in by the same rule in
    torch ops: the same indices as outside (ties to the lowest index across chunks) and the distance's
    gradient 2 (q - k) through the chosen key; NaN errors still name the chunk and row."""
    gen = torch.Generator().manual_seed(1)
    q = torch.randint(-2, 3, (30, 3), generator=gen).double()  # small integers: many exact ties
    once = torch.randint(-2, 3, (14, 3), generator=gen).double()
    k = torch.cat([once, once, once])[:40]  # every key again in a later chunk: ties go to the lowest index

    def chunked(keys):
        parts = [keys[:13], keys[13:29], keys[29:]]
        return keys if split is None else parts if split == "list" else (p for p in parts)

    index = glann_ext.nn_argmin(q, k)
    assert torch.equal(index, reference.nn_argmin_exact(q, k))
    seen = []

    def distance(a, b):
        i, d = glann_ext.nn_argmin(a, chunked(b), return_distances=True)
        seen.append(i)
        return d.sum()

    gq, gk = torch.func.grad(distance, argnums=(0, 1))(q, k)
    assert torch.equal(seen[0], index)
    diff = q - k[index]
    torch.testing.assert_close(gq, 2 * diff, rtol=0, atol=0)
    torch.testing.assert_close(gk, torch.zeros_like(k).index_add_(0, index, -2 * diff), rtol=0, atol=0)
    jac = torch.func.jacrev(lambda a: glann_ext.nn_argmin(a, chunked(k), return_distances=True)[1])(q)
    torch.testing.assert_close(
        jac, torch.func.jacrev(lambda a: ((a - k[index]) ** 2).sum(1))(q), rtol=0, atol=0
    )
    bad = k.clone()
    bad[20, 1] = float("nan")
    name, row = ("keys", 20) if split is None else ("keys[1]", 7)
    with pytest.raises(NonFiniteError, match=rf"^nn_argmin: {re.escape(name)} row {row} contains NaN"):
        torch.func.grad(distance, argnums=1)(q, bad)
    doc = " ".join(glann_ext.ops.__doc__.split())
    assert (
        "``vjp`` over ``laplacian_pyramid_loss``, ``project_to_sphere`` and ``nn_argmin``'s distances" in doc
    )


@pytest.mark.parametrize("keys_batched", [False, True])
def test_vmap_of_nn_argmin_is_the_search_of_each_entry(keys_batched):
    """vmap over nn_argmin raised (the in-place fold op has no batching rule). Now each entry's indices,
    distances and per-entry gradients are those of its own search, ties included; keys shared by the
    entries are searched once for every entry's queries (a NaN error then counts query rows across the
    entries), keys of their own once per entry, also in chunks."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randint(-2, 3, (4, 30, 3), generator=gen).double()  # small integers: many exact ties
    k = torch.randint(-2, 3, (4, 40, 3), generator=gen).double()
    keys, in_dims = (k, (0, 0)) if keys_batched else (k[1], (0, None))
    entry_keys = [k[i] if keys_batched else k[1] for i in range(4)]

    def search(a, b):
        return glann_ext.nn_argmin(a, [b[:13], b[13:]], return_distances=True)

    index, dist = torch.func.vmap(search, in_dims=in_dims)(q, keys)
    for i in range(4):
        want = glann_ext.nn_argmin(q[i], entry_keys[i], return_distances=True)
        assert torch.equal(index[i], want[0]) and torch.equal(dist[i], want[1])
        assert torch.equal(want[0], reference.nn_argmin_exact(q[i], entry_keys[i]))
    grads = torch.func.vmap(torch.func.grad(lambda a, b: search(a, b)[1].sum()), in_dims=in_dims)(q, keys)
    want = torch.stack([2 * (q[i] - entry_keys[i][index[i]]) for i in range(4)])
    torch.testing.assert_close(grads, want, rtol=0, atol=0)
    empty = torch.func.vmap(search, in_dims=in_dims)(q[:, :0], keys)  # entries of no queries
    assert empty[0].shape == (4, 0) and empty[1].shape == (4, 0)
    bad = q.clone()
    bad[2, 5, 1] = float("nan")
    row = 2 * 30 + 5 if not keys_batched else 5
    with pytest.raises(NonFiniteError, match=rf"^nn_argmin: queries row {row} contains NaN"):
        torch.func.vmap(search, in_dims=in_dims)(bad, keys)


def _func_grads(device: str) -> tuple[torch.Tensor, ...]:
    """torch.func.grad of the loss, of a weighted projection and of nn_argmin's distances, per-sample
    gradients of the loss, a vmapped projection and vmapped distances, on ``device``."""
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 3, 16, 12, generator=gen), torch.randn(2, 3, 16, 12, generator=gen)
    q, k, w = (
        torch.randn(50, 8, generator=gen),
        torch.randn(300, 8, generator=gen),
        torch.randn(50, 8, generator=gen),
    )
    x, y, q, k, w = (t.to(device) for t in (x, y, q, k, w))
    return (
        torch.func.grad(lambda a: glann_ext.laplacian_pyramid_loss(a, y))(x),
        torch.func.grad(lambda a: (glann_ext.project_to_sphere(a) * w).sum())(q),
        torch.func.grad(lambda a: glann_ext.nn_argmin(a, k, return_distances=True)[1].sum())(q),
        torch.func.vmap(torch.func.grad(lambda a, b: glann_ext.laplacian_pyramid_loss(a[None], b[None])))(
            x, y
        ),
        torch.func.vmap(glann_ext.project_to_sphere)(q.view(5, 10, 8)),
        torch.func.vmap(lambda a: glann_ext.nn_argmin(a, k, return_distances=True)[1])(q.view(5, 10, 8)),
    )


@pytest.mark.cuda
def test_torch_func_grad_on_cuda_matches_the_cpu():
    """The transforms' Function runs the CUDA kernels on the unwrapped tensors like the CPU ones."""
    for got, want in zip(_func_grads("cuda"), _func_grads("cpu")):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5)


# Mutation test (2026-12-07): an in-place op wrote through a read-only numpy array
def test_in_place_projection_refuses_a_read_only_array():
    a = np.full((3, 4), 2.0, dtype=np.float32)
    a.flags.writeable = False
    with pytest.raises(ValueError, match="read-only numpy array"):
        glann_ext.project_to_sphere_(a)
    assert (a == 2.0).all()
