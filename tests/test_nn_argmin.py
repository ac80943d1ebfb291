"""nn_argmin against an independent brute-force oracle (float64 direct differences, written here)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from glann_testing import RecordOps, child_kwargs, hardware_cpu_isa
from hypothesis import given, settings
from hypothesis import strategies as st

import glann_ext
from glann_ext import nn_argmin
from glann_ext.errors import NonFiniteError, UsageError
from glann_ext.ops import reference
from glann_ext.ops.kernels import use_cuda_kernels
from glann_ext.ops.nn_argmin import RunningArgmin


def oracle(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairwise squared distances in float64 from differences; argmin takes the first minimum. Rows in
    chunks of at most 2^22 differences, so that large D does not materialise an (n, m, D) block."""
    rows = max(1, (1 << 22) // max(1, k.shape[0] * k.shape[1]))
    kd = k.double()
    # at least one chunk, so that no queries still give an (0, m) matrix
    chunks = [q[i : i + rows].double() for i in range(0, max(1, len(q)), rows)]
    d = torch.cat([((c[:, None, :] - kd[None, :, :]) ** 2).sum(-1) for c in chunks])
    return d, d.argmin(1)


def assert_nearest(
    q: torch.Tensor, k: torch.Tensor, idx: torch.Tensor, dist: torch.Tensor | None = None
) -> None:
    """idx is the oracle's index, or (only inside the float32 rounding of the norm expansion) an equally
    near key; distances match the exact ones."""
    assert idx.dtype == torch.int64 and idx.shape == (q.shape[0],)
    d, ref = oracle(q, k)
    rows = torch.arange(q.shape[0])
    chosen = d[rows, idx]
    best = d[rows, ref]
    scale = (q.double() ** 2).sum(1) + (k.double() ** 2).sum(1).max()
    tol = 2e-6 * scale + 1e-12
    assert bool(((chosen - best) <= tol).all()), "a returned key is farther than the nearest one"
    # Almost all rows of random data are far from a near-tie: the index itself must agree.
    assert (idx == ref).double().mean() >= 0.99
    if dist is not None:
        assert dist.dtype == torch.float32
        torch.testing.assert_close(dist.double(), chosen, rtol=1e-5, atol=1e-5)


def assert_search(
    q: torch.Tensor, k: torch.Tensor, idx: torch.Tensor, dist: torch.Tensor | None = None
) -> None:
    """float32: :func:`assert_nearest`; float64: the exact reference's indices, ties included, and distances."""
    if q.dtype != torch.float64:
        assert_nearest(q, k, idx, dist)
        return
    want, want_dist = reference.nn_argmin_exact(q, k, return_distances=True)
    assert torch.equal(idx, want)  # no near-tie of random data survives float64 rounding
    if dist is not None:
        torch.testing.assert_close(dist, want_dist, rtol=1e-12, atol=1e-12)


SHAPES = [
    (1, 1, 1),
    (1, 7, 3),
    (7, 1, 5),
    (2, 3, 2),
    (13, 17, 2),
    (11, 33, 64),  # keys not a multiple of any panel width
    (97, 101, 64),
    (5, 1000, 1),
    (129, 257, 33),
    (300, 3001, 17),
    (61, 509, 784),
    (3, 20011, 8),  # few queries, many keys: the key-split path
]


@pytest.mark.parametrize(("n", "m", "d"), SHAPES)
def test_matches_oracle(n: int, m: int, d: int) -> None:
    q, k = torch.randn(n, d), torch.randn(m, d)
    idx, dist = nn_argmin(q, k, return_distances=True)
    assert_nearest(q, k, idx, dist)


def test_default_returns_only_indices() -> None:
    q, k = torch.randn(5, 4), torch.randn(9, 4)
    out = nn_argmin(q, k)
    assert isinstance(out, torch.Tensor) and out.shape == (5,)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda q, k: (q.t().contiguous().t(), k), id="queries-column-major"),
        pytest.param(lambda q, k: (q, k.t().contiguous().t()), id="keys-column-major"),
        pytest.param(
            lambda q, k: (torch.cat([q, q], 1)[:, ::2], torch.cat([k, k], 1)[:, ::2]), id="column-step-2"
        ),
        pytest.param(lambda q, k: (torch.cat([q, q])[::2], torch.cat([k, k])[::2]), id="row-step-2"),
        pytest.param(lambda q, k: (q[2:], k[3:]), id="storage-offset"),
    ],
)
def test_strided_inputs(make) -> None:
    q, k = torch.randn(40, 24), torch.randn(700, 24)
    qs, ks = make(q, k)
    assert_nearest(qs, ks, nn_argmin(qs, ks))
    torch.testing.assert_close(nn_argmin(qs, ks), nn_argmin(qs.contiguous(), ks.contiguous()), rtol=0, atol=0)


def test_expanded_keys_all_tie_to_index_zero() -> None:
    k = torch.randn(1, 16).expand(1000, 16)
    assert bool((nn_argmin(torch.randn(9, 16), k) == 0).all())


def test_duplicates_resolve_to_lowest_index() -> None:
    base = torch.randn(50, 8)
    k = torch.cat([base, base, base])
    assert torch.equal(nn_argmin(base, k), torch.arange(50))


@pytest.mark.parametrize("n", [1, 3, 200, 1000])  # the keys split across tasks, copies in different blocks
def test_ties_across_blocks_and_splits(n: int) -> None:
    # The nearest key of every query appears twice, far apart in index, so the copies land in different
    # panels, packed blocks and key splits; the lower copy must win every time.
    m, d = 60000, 8
    q = torch.randn(n, d)
    k = torch.randn(m, d) * 10 + 100  # far away from the queries
    lo = torch.randperm(5000)[:n]
    hi = 40000 + torch.arange(n)
    k[hi] = q
    k[lo] = q  # lower copies (lo indices are distinct from hi)
    idx = nn_argmin(q, k)
    first = torch.stack([torch.nonzero((k == q[i]).all(1))[0, 0] for i in range(n)])
    assert torch.equal(idx, first)


def test_integer_ties_exact() -> None:
    # Small integers: every product and sum is exact in float32, so scores tie exactly.
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-2, 3, (200, 3), generator=g).float()
    k = torch.randint(-2, 3, (500, 3), generator=g).float()
    _, ref = oracle(q, k)
    assert torch.equal(nn_argmin(q, k), ref)


@pytest.mark.parametrize(
    ("dtype", "exponent"),
    [(torch.float32, -62), (torch.float32, -72), (torch.float64, -510), (torch.float64, -534)],
)
def test_tiny_distances_down_to_the_subnormal_range_are_ranked_exactly(dtype, exponent) -> None:
    # Squared norms 2^-124 and 2^-1020 (normal), 2^-144 and 2^-1068 (subnormal): every score here is a
    # multiple of the smallest subnormal, so ||k||^2 - 2 q.k is exact and so is the ranking.
    a = 2.0**exponent
    k = torch.tensor([[a], [a * 3], [0.0], [a * 2]], dtype=dtype)
    q = torch.tensor([[0.0], [a * 3], [a * 2.5]], dtype=dtype)
    idx, dist = nn_argmin(q, k, return_distances=True)
    assert idx.tolist() == [2, 1, 1]  # the tie at 2.5a between 2a and 3a goes to the lower index
    assert dist.tolist() == [0.0, 0.0, (a * 0.5) ** 2]


# A key whose squared norm lies at the bottom of the range against a key at distance 0, placed second.
# 0.3.9's CPU kernels kept ||k||^2 / 2 - q.k, and a half below the smallest normal float rounds (here to
# the other key's score): the farther key tied and won on its lower index. The last pair are normal
# squared norms in [2^-126, 2^-125), whose halves are subnormal: the farther key, first, tied the nearer.
TINY_KEYS = [
    (torch.float32, [3 * 2.0**-76, 0.0]),  # a^2 rounds to 2^-149, its half to 0
    (torch.float64, [2.0**-537, 0.0]),  # a^2 = 2^-1074
    (torch.float32, [1.8418797e-38**0.5, 1.8418794e-38**0.5]),
]


@pytest.mark.parametrize(("dtype", "keys"), TINY_KEYS)
def test_a_squared_norm_at_the_bottom_of_the_range_still_ranks(dtype, keys) -> None:
    q = torch.zeros(2, 1, dtype=dtype)
    k = torch.tensor(keys, dtype=dtype)[:, None]
    assert k[0, 0] ** 2 > k[1, 0] ** 2  # the farther key comes first
    idx, dist = nn_argmin(q, k, return_distances=True)
    assert idx.tolist() == [1, 1]
    assert dist.tolist() == [(k[1, 0] ** 2).item()] * 2


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    m=st.integers(1, 300),
    d=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_integer_data(n: int, m: int, d: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-3, 4, (n, d), generator=g).float()
    k = torch.randint(-3, 4, (m, d), generator=g).float()
    dist_all, ref = oracle(q, k)
    idx, dist = nn_argmin(q, k, return_distances=True)
    assert torch.equal(idx, ref)
    assert torch.equal(dist.double(), dist_all.min(1).values)


def test_chunked_keys_equal_whole() -> None:
    q, k = torch.randn(64, 32), torch.randn(5000, 32)
    k[4000] = q[0]  # exact hit in a late chunk
    whole = nn_argmin(q, k, return_distances=True)
    chunks = list(k.split(777))
    as_list = nn_argmin(q, chunks, return_distances=True)
    as_gen = nn_argmin(q, (c for c in chunks), return_distances=True)
    for got in (as_list, as_gen):
        assert torch.equal(got[0], whole[0])
        torch.testing.assert_close(got[1], whole[1])
    assert whole[0][0] == 4000


def test_chunk_ties_go_to_earlier_chunk_and_empty_chunks_count_nothing() -> None:
    q = torch.randn(10, 4)
    chunks = [torch.randn(5, 4) + 50, q.clone(), torch.empty(0, 4), q.clone()]
    assert torch.equal(nn_argmin(q, chunks), torch.arange(10) + 5)


def test_ten_million_keys_in_lazy_chunks() -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.randn(64, 8, generator=g)

    def chunks():
        for i in range(10):
            c = torch.randn(1_000_000, 8, generator=g) * 3 + 20
            if i == 9:
                c[-1] = q[5]
            yield c

    idx, dist = nn_argmin(q, chunks(), return_distances=True)
    assert idx[5].item() == 9_999_999 and dist[5].item() == 0.0
    assert int(idx.max()) < 10_000_000


def test_workspace_does_not_grow_with_keys() -> None:
    from glann_ext.ops import _native

    for code in (0, 1):  # float32, float64
        ws = [_native._C.nn_argmin_cpu_workspace_bytes(20000, m, 64, code, 2) for m in (10**5, 10**6, 10**7)]
        assert ws[0] == ws[1] == ws[2] and ws[0] < 16 << 20


def test_empty_queries() -> None:
    idx, dist = nn_argmin(torch.empty(0, 5), torch.randn(3, 5), return_distances=True)
    assert idx.shape == (0,) and idx.dtype == torch.int64 and dist.shape == (0,)


def test_thread_count_does_not_change_results() -> None:
    q, k = torch.randn(500, 64), torch.randn(20000, 64)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = nn_argmin(q, k, return_distances=True)
        torch.set_num_threads(2)
        two = nn_argmin(q, k, return_distances=True)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_thread_pool_grows_and_shrinks_between_calls() -> None:
    # New pool workers appear when a call asks for more threads than before, idle ones sit out calls
    # that ask for fewer; results must not change.
    q, k = torch.randn(800, 16), torch.randn(3000, 16)
    want = nn_argmin(q, k)
    old = torch.get_num_threads()
    try:
        for threads in [1, 3, 2, 6, 1, 8, 4, 2, 7, 5]:
            torch.set_num_threads(threads)
            assert torch.equal(nn_argmin(q, k), want)
    finally:
        torch.set_num_threads(old)


def test_thread_pool_survives_fork() -> None:
    # DataLoader workers are forked children: the pool must be usable there.
    import multiprocessing as mp

    q, k = torch.randn(300, 8), torch.randn(2000, 8)
    want = nn_argmin(q, k)
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(nn_argmin, (q, k)).get(timeout=120)  # a pool without its fork reset hangs
    assert torch.equal(got, want)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_simd_path(isa: str, tmp_path) -> None:
    # The SIMD level is fixed per process, so each path runs in a child interpreter.
    script = textwrap.dedent(
        """
        import json, sys, torch, glann_ext
        from glann_ext.ops import _native
        TINY_KEYS = json.loads(sys.argv[1])
        torch.manual_seed(0)
        for n, m, d in [(1, 1, 1), (13, 333, 7), (100, 4099, 64), (3, 20011, 5), (7, 300, 784)]:
            q, k = torch.randn(n, d), torch.randn(m, d)
            ref = ((q.double()[:, None] - k.double()[None]) ** 2).sum(-1)
            idx = glann_ext.nn_argmin(q, k)
            gap = ref[torch.arange(n), idx] - ref.min(1).values
            assert bool((gap <= 1e-4).all()), (n, m, d, gap.max())
            assert (idx == ref.argmin(1)).double().mean() >= 0.99
            assert torch.equal(glann_ext.nn_argmin(q.double(), k.double()), ref.argmin(1))
            k2 = torch.cat([k, k]).double()  # exact copies: the lower index on every path
            assert torch.equal(glann_ext.nn_argmin(k2[:m], k2), torch.arange(m))
            for dt, keys in TINY_KEYS:  # the nearer key, second, wins on every path
                tiny = torch.tensor(keys, dtype=getattr(torch, dt))[:, None]
                assert glann_ext.nn_argmin(torch.zeros(2, 1, dtype=tiny.dtype), tiny).tolist() == [1, 1]
            q.view(-1)[-1] = float("nan")
            try:
                glann_ext.nn_argmin(q, k)
                raise AssertionError("no NonFiniteError")
            except ValueError as exc:
                assert exc.row == n - 1, exc
        print(_native._C.nn_argmin_cpu_path())
        """
    )
    tiny = json.dumps([(str(dt).removeprefix("torch."), keys) for dt, keys in TINY_KEYS])  # floats round-trip
    out = subprocess.run(
        [sys.executable, "-c", script, tiny],
        **child_kwargs(tmp_path, GLANN_EXT_CPU_ISA=isa),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    supported = hardware_cpu_isa()
    order = ["baseline", "avx2", "avx512"]
    expected = order[min(order.index(isa), order.index(supported))]
    assert out.stdout.strip() == expected


def _running_best(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n,), float("inf")), torch.full((n,), torch.iinfo(torch.int64).max)


def test_opcheck() -> None:
    from glann_ext.ops.nn_argmin import _fold, _merge

    q, k = torch.randn(9, 5), torch.randn(31, 5)
    torch.library.opcheck(_fold, (q, k, *_running_best(9), 100))
    score, index = torch.randn(9), torch.randint(0, 31, (9,))
    torch.library.opcheck(_merge, (*_running_best(9), score, index, 100))


def test_fold_is_the_running_lexicographic_minimum() -> None:
    # Folding chunks in any order gives (score, global index) of one search; the merge op folds a
    # precomputed candidate by the same rule (ties to the lower global index).
    from glann_ext.ops.nn_argmin import _fold, _merge

    g = torch.Generator().manual_seed(4)
    q = torch.randint(-2, 3, (50, 3), generator=g).float()
    k = torch.randint(-2, 3, (400, 3), generator=g).float()
    _, ref = oracle(q, k)
    want_score = ((k * k).sum(1)[None] - 2 * q @ k.t()).min(1).values
    for order in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]):
        score, index = _running_best(50)
        for c in order:
            _fold(q, k[100 * c : 100 * (c + 1)], score, index, 100 * c)
        assert torch.equal(index, ref) and torch.equal(score, want_score)
    score, index = _running_best(3)
    _merge(score, index, torch.tensor([1.0, 2.0, float("inf")]), torch.tensor([4, 5, 6]), 10)
    _merge(score, index, torch.tensor([1.0, 1.0, float("inf")]), torch.tensor([0, 9, 0]), 20)
    _merge(score, index, torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 0]), 0)
    assert score.tolist() == [1.0, 1.0, 5.0] and index.tolist() == [0, 29, 0]


def test_running_argmin_has_no_result_before_a_key() -> None:
    """result() before any key returned INT64_MAX indices (the running best's placeholder) as an answer."""
    q = torch.randn(3, 4)
    best = RunningArgmin(q, return_distances=True)
    best.update(torch.randn(0, 4), 0)
    with pytest.raises(UsageError, match="no key was searched"):
        best.result()
    k = torch.randn(5, 4)
    best.update(k, 0)
    assert torch.equal(best.result()[0], reference.nn_argmin_exact(q, k))
    assert RunningArgmin(q[:0]).result().shape == (0,)  # nothing asked: an empty answer


def test_registered_merge_op_refuses_inconsistent_arguments() -> None:
    """torch.ops.glann_ext.nn_argmin_merge_ read n = len(best_score) candidates from score and index of any
    size and wrote int64s through a best_index of any dtype (out-of-bounds reads, heap corruption); now
    their shapes, dtypes and layout are checked first."""
    merge = torch.ops.glann_ext.nn_argmin_merge_
    best, idx = torch.full((4,), math.inf), torch.zeros(4, dtype=torch.int64)
    merge(best, idx, torch.tensor([3.0, 1.0, 2.0, 0.5]), torch.tensor([0, 1, 2, 3]), 10)
    assert best.tolist() == [3.0, 1.0, 2.0, 0.5] and idx.tolist() == [10, 11, 12, 13]
    s, i = torch.zeros(4), torch.zeros(4, dtype=torch.int64)
    cases = [
        (
            (best, idx, torch.zeros(1), i, 0),
            r"score must be a contiguous \(4,\) torch.float32 tensor on cpu, got \(1,\)",
        ),
        ((best, idx, s, torch.zeros(1, dtype=torch.int64), 0), r"index must be a contiguous \(4,\)"),
        (
            (best, torch.zeros(4, dtype=torch.int32), s, i, 0),
            "best_index must be .* torch.int64 .* got .*torch.int32",
        ),
        ((best, idx, s.double(), i, 0), "score must be .* torch.float32 .* got .* torch.float64"),
        ((best, idx[:2], s, i, 0), r"best_index must be a contiguous \(4,\)"),
        ((best, idx, s, i, -3), "key_offset must be an int >= 0, got -3"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=rf"^nn_argmin_merge_: {match}"):
            merge(*args)
    with pytest.raises(TypeError, match="best_score"):
        merge(torch.zeros(4, dtype=torch.int32), idx, s, i, 0)
    assert best.tolist() == [3.0, 1.0, 2.0, 0.5] and idx.tolist() == [10, 11, 12, 13]  # nothing written


def test_registered_fold_op_refuses_inconsistent_arguments() -> None:
    """torch.ops.glann_ext.nn_argmin_fold_ wrote N results through best_score/best_index of any size (heap
    corruption); now their shapes, dtypes and layout are checked against the queries first."""
    fold = torch.ops.glann_ext.nn_argmin_fold_
    q, k = torch.randn(50, 4), torch.randn(10, 4)
    score, index = torch.full((50,), math.inf), torch.zeros(50, dtype=torch.int64)
    fold(q, k, score, index, 0)
    assert torch.equal(index, _nearest_by_differences(q, k))
    cases = [
        (
            (q, k, torch.full((1,), math.inf), index, 0),
            r"best_score must be a contiguous \(50,\) torch.float32",
        ),
        ((q, k, score, torch.zeros(1, dtype=torch.int64), 0), r"best_index must be a contiguous \(50,\)"),
        ((q, k, score, torch.zeros(50, dtype=torch.int32), 0), "best_index must be .* torch.int64"),
        ((q, k, score.double(), index, 0), "best_score must be .* torch.float32 .* got .* torch.float64"),
        ((q, k, torch.full((100,), math.inf)[::2], index, 0), r"best_score must be .*\(not contiguous\)"),
        ((q, k, score, index, -1), "key_offset must be an int >= 0, got -1"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=rf"^nn_argmin_fold_: {match}"):
            fold(*args)
    with pytest.raises(ValueError, match=r"nn_argmin_fold_: keys must have D=4"):
        fold(q, torch.randn(10, 5), score, index, 0)
    with pytest.raises(TypeError, match="nn_argmin_fold_: keys must have the same dtype as queries"):
        fold(q, k.double(), score, index, 0)


def test_running_argmin_update_checks_its_keys() -> None:
    """RunningArgmin.update read keys of another dtype or width as raw memory (indices, no error)."""
    best = RunningArgmin(torch.randn(5, 8))
    with pytest.raises(
        TypeError, match=r"^keys must have the same dtype as queries \(float32\), got float64"
    ):
        best.update(torch.randn(3, 8, dtype=torch.float64), 0)
    with pytest.raises(
        ValueError, match=r"^keys\[2\] must have D=8 columns like queries \(5, 8\), got shape \(3, 7\)"
    ):
        best.update(torch.randn(3, 7), 0, name="keys[2]")
    with pytest.raises(ValueError, match=r"^keys must be a 2-D tensor"):
        best.update(torch.randn(8), 0)
    with pytest.raises(ValueError, match=r"^offset must be an int >= 0, got -3"):
        best.update(torch.randn(3, 8), -3)
    k = torch.randn(3, 8)
    best.update(k, 0)
    assert torch.equal(best.result(), _nearest_by_differences(best.queries, k))


def test_torch_compile_fullgraph() -> None:
    q, k = torch.randn(40, 8), torch.randn(500, 8)
    fn = torch.compile(
        lambda a, b: nn_argmin(a, b, return_distances=True, check_finite_values=False),
        backend="aot_eager",
        fullgraph=True,
    )
    got, want = fn(q, k), nn_argmin(q, k, return_distances=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# --------------------------------------------------------------------------------------------- float64


@pytest.mark.parametrize(("n", "m", "d"), SHAPES)
def test_float64_matches_the_exact_oracle(n: int, m: int, d: int) -> None:
    q, k = torch.randn(n, d, dtype=torch.float64), torch.randn(m, d, dtype=torch.float64)
    idx, dist = nn_argmin(q, k, return_distances=True)
    assert idx.dtype == torch.int64 and dist.dtype == torch.float64
    assert_search(q, k, idx, dist)


def test_float64_separates_keys_that_float32_cannot() -> None:
    """Two keys per query, 1e-3 and 0.9e-3 away along one direction, on values near 10: squared distances
    1.9e-7 apart, far below float32's rounding of the expansion (~1e-7 * |q|^2 = 3e-4) and far above
    float64's (~6e-13). float32 orders them by rounding; float64 must find the nearer (the higher index)."""
    g = torch.Generator().manual_seed(2)
    n, d = 300, 16
    q = torch.randn(n, d, dtype=torch.float64, generator=g) + 10
    u = torch.randn(n, d, dtype=torch.float64, generator=g)
    u /= u.norm(dim=1, keepdim=True)
    noise = torch.randn(500, d, dtype=torch.float64, generator=g) + 10
    k = torch.cat([q + 1e-3 * u, noise, q + 0.9e-3 * u])
    nearer = torch.arange(n) + n + 500
    assert torch.equal(reference.nn_argmin_exact(q, k), nearer)
    assert torch.equal(nn_argmin(q, k), nearer)
    assert not torch.equal(nn_argmin(q.float(), k.float()), nearer)  # so float32 math would fail this test


@pytest.mark.parametrize("n", [1, 200, 1000])
def test_float64_ties_across_blocks_and_splits(n: int) -> None:
    m, d = 30000, 8
    g = torch.Generator().manual_seed(n)
    q = torch.randn(n, d, dtype=torch.float64, generator=g)
    k = torch.randn(m, d, dtype=torch.float64, generator=g) * 10 + 100
    lo = torch.randperm(5000, generator=g)[:n]
    k[20000 + torch.arange(n)] = q
    k[lo] = q
    assert torch.equal(nn_argmin(q, k), lo)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 40),
    m=st.integers(1, 300),
    d=st.integers(1, 9),
    chunks=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_float64_integer_data_and_chunks(n: int, m: int, d: int, chunks: int, seed: int) -> None:
    """Small integers: exact in float64 too, so ties are exact and the lowest index must win, whether the
    keys come whole, in chunks or as numpy arrays."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-3, 4, (n, d), generator=g).double()
    k = torch.randint(-3, 4, (m, d), generator=g).double()
    want, want_dist = reference.nn_argmin_exact(q, k, return_distances=True)
    idx, dist = nn_argmin(q, list(k.tensor_split(chunks)), return_distances=True)
    assert torch.equal(idx, want) and torch.equal(dist, want_dist)
    idx_np, dist_np = nn_argmin(q.numpy(), k.numpy(), return_distances=True)
    assert np.array_equal(idx_np, want.numpy()) and np.array_equal(dist_np, want_dist.numpy())


def test_numpy_queries_with_keys_that_require_grad_give_numpy_results() -> None:
    """numpy queries give numpy results, whatever the keys are: a key tensor that requires grad made the
    distances' ``.numpy()`` fail with torch's "Can't call numpy() on Tensor that requires grad"."""
    q, k = torch.randn(5, 3), torch.randn(9, 3, requires_grad=True)
    idx, dist = nn_argmin(q.numpy(), k, return_distances=True)
    want, want_dist = nn_argmin(q, k.detach(), return_distances=True)
    assert isinstance(dist, np.ndarray) and np.array_equal(idx, want.numpy())
    assert np.array_equal(dist, want_dist.numpy())


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 30), m=st.integers(1, 500), d=st.integers(1, 70), seed=st.integers(0, 2**31 - 1))
def test_property_float64_random_data(n: int, m: int, d: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, dtype=torch.float64, generator=g)
    k = torch.randn(m, d, dtype=torch.float64, generator=g)
    assert torch.equal(nn_argmin(q, k), reference.nn_argmin_exact(q, k))


def test_float64_running_argmin_with_reference_scores() -> None:
    """The fused fold and the reference scorer agree in float64 (scores, indices, distances) over chunks
    arriving in any order, as the distributed ring folds them."""
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-2, 3, (40, 5), generator=g).double()  # exact: ties are ties on both paths
    k = torch.randint(-2, 3, (500, 5), generator=g).double()
    k[450:] = k[:50]
    fused = RunningArgmin(q, return_distances=True)
    ref = RunningArgmin(q, return_distances=True, scores=reference.nn_argmin_scores_reference)
    for start in (400, 0, 200, 100, 300):
        fused.update(k[start : start + 100], start)
        ref.update(k[start : start + 100], start)
    want = reference.nn_argmin_exact(q, k)
    assert fused.score.dtype == ref.score.dtype == torch.float64
    assert torch.equal(fused.result()[0], want) and torch.equal(ref.result()[0], want)
    assert torch.equal(fused.result()[1], ref.result()[1]) and torch.equal(fused.score, ref.score)


def test_running_argmin_takes_strided_answers_from_a_scorer() -> None:
    """A ``scores`` callable may answer with strided tensors (views): they are folded as their values, not
    as their memory (found by mutation testing: the merge read them as if contiguous)."""

    def strided(queries, keys):
        score, index = reference.nn_argmin_scores_reference(queries, keys)
        return torch.stack([score, score], 1)[:, 0], torch.stack([index, index], 1)[:, 0]

    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(30, 4, generator=g), torch.randn(300, 4, generator=g)
    best = RunningArgmin(q, scores=strided)
    assert not strided(q, k[:100])[0].is_contiguous()
    for start in (200, 0, 100):
        best.update(k[start : start + 100], start)
    assert torch.equal(best.result(), reference.nn_argmin_exact(q, k))


@pytest.mark.parametrize(
    ("answer", "exc", "match"),
    [
        (lambda s, i: (s.double(), i), TypeError, r"scores\(\.\.\.\)\[0\] must have dtype in \(float32\)"),
        (lambda s, i: (s, i.int()), TypeError, r"scores\(\.\.\.\)\[1\] must have dtype in \(int64\)"),
        (lambda s, i: (s.tolist(), i), TypeError, r"scores\(\.\.\.\)\[0\] must be a torch.Tensor"),
        (
            lambda s, i: (s[:-1], i),
            ValueError,
            r"scores\(\.\.\.\)\[0\] must have shape \(6,\) on cpu, got \(5,\) on cpu",
        ),
        (
            lambda s, i: (s, i.to("meta")),
            ValueError,
            r"scores\(\.\.\.\)\[1\] must have shape \(6,\) on cpu, got \(6,\) on meta",
        ),
    ],
)
def test_running_argmin_checks_what_a_scorer_answers(answer, exc, match) -> None:
    """The kernels read a scorer's answers as rows of the score dtype and int64 on the queries' device:
    anything else is refused before they do (found by mutation testing: no test checked these errors)."""
    q = torch.randn(6, 3)
    best = RunningArgmin(q, scores=lambda a, b: answer(*reference.nn_argmin_scores_reference(a, b)))
    with pytest.raises(exc, match=match):
        best.update(torch.randn(10, 3), 0)
    assert torch.equal(best.index, torch.full((6,), torch.iinfo(torch.int64).max))


# ------------------------------------------------------------------------------------- NaN/Inf, in-kernel


def test_non_finite_keys_with_no_queries_still_raise() -> None:
    k = torch.randn(20, 3)
    k[7, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="keys row 7"):
        nn_argmin(torch.empty(0, 3), k)
    assert nn_argmin(torch.empty(0, 3), k, check_finite_values=False).shape == (0,)
    # A slice of a larger tensor (row0) is named by the row of that tensor on this path too (found by
    # mutation testing: the rows were counted from the slice).
    with pytest.raises(NonFiniteError, match=r"^nn_argmin: keys\[2\] row 17 contains NaN"):
        RunningArgmin(torch.empty(0, 3), check_finite=True).update(k, 0, name="keys[2]", row0=10)


def test_non_finite_queries_are_checked_after_an_empty_first_chunk() -> None:
    q = torch.randn(6, 3)
    q[5, 2] = float("-inf")
    with pytest.raises(NonFiniteError, match="queries row 5"):
        nn_argmin(q, [torch.empty(0, 3), torch.randn(9, 3)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [3, 700])  # the keys split across tasks either way
def test_non_finite_far_into_the_keys(n: int, dtype: torch.dtype) -> None:
    q, k = torch.randn(n, 16, dtype=dtype), torch.randn(60000, 16, dtype=dtype)
    k[51234, 3] = float("inf")
    k[45001, 15] = float("nan")
    with pytest.raises(NonFiniteError, match="keys row 45001") as info:
        nn_argmin(q, k)
    assert info.value.row == 45001


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_queries_packed_in_pieces_report_the_lowest_row(dtype: torch.dtype) -> None:
    # Queries of 512 KB or more are packed in pieces on the thread pool, before any key is read; the
    # lowest bad row wins whichever piece finds its row first. Few keys: several query ranges.
    q, k = torch.randn(4000, 64, dtype=dtype), torch.randn(30, 64, dtype=dtype)
    q[3999, 1], q[2101, 0], q[2100, 63] = float("nan"), float("inf"), -float("inf")
    k[5, 5] = float("nan")  # queries are reported first
    with pytest.raises(NonFiniteError, match="queries row 2100") as info:
        nn_argmin(q, k)
    assert info.value.row == 2100
    q[2100:2102] = 0.0
    q[3999] = 0.0
    with pytest.raises(NonFiniteError, match="keys row 5"):
        nn_argmin(q, k)
    k[5] = k[7]  # an exact copy of a later key: the lower index wins in every query range
    got = nn_argmin(q, k)
    assert (got != 7).all()
    assert_search(q, k, got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_queries_past_the_packing_bound_run_in_passes(dtype: torch.dtype) -> None:
    # Over 32 MB of queries are packed and searched in passes (2 or 3 here), so the workspace holds one
    # pass, not a copy of every query; results, ties and the NaN order must not see the passes.
    q, k = torch.randn(9000, 1024, dtype=dtype), torch.randn(40, 1024, dtype=dtype)
    k[30] = k[3]  # an exact copy: the lower index wins in every pass
    got, dist = nn_argmin(q, k, return_distances=True)
    assert (got != 30).all()
    assert_search(q, k, got, dist)
    assert torch.equal(got[8000:], nn_argmin(q[8000:], k))  # rows across a pass boundary, searched alone
    # the same queries column-major and row-padded: each pass starts at its first row's stride (a pass that
    # stepped by dim instead searched the wrong rows without a word, found by mutation testing)
    assert torch.equal(nn_argmin(q.t().contiguous().t(), k), got)
    assert torch.equal(nn_argmin(torch.nn.functional.pad(q, (0, 3))[:, :1024], k), got)
    k[11, 0] = float("nan")
    q[8999, 5] = float("inf")  # in the last pass, after the pass that meets the bad key
    with pytest.raises(NonFiniteError, match="queries row 8999"):
        nn_argmin(q, k)
    q[8999, 5] = 0.0
    with pytest.raises(NonFiniteError, match="keys row 11"):
        nn_argmin(q, k)


def _nearest_by_differences(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Exact float64 argmin from direct differences, rows scaled by a power of two first (exact), so rows
    far beyond float32's and float64's squared range compare correctly."""
    scale = 2.0 ** -math.floor(math.log2(max(q.abs().max().item(), k.abs().max().item(), 1e-300)))
    diff = q.double()[:, None, :] * scale - k.double()[None, :, :] * scale
    return (diff * diff).sum(-1).argmin(1)


@pytest.mark.parametrize(
    ("q", "k", "argument"),
    [
        ([[2e19]], [[2e19 + 1e13], [2e19]], "queries row 0"),  # the right answer is key 1, at distance 0
        ([[1.0], [2.0]], [[1.0], [1e20]], "keys row 1"),
        ([[1.0]], [[0.0], [1e19]], "keys row 1"),  # ||k||^2 1e38: above max/4, below max/2
        ([[1.5e154]], [[1.0], [1.5e154]], "queries row 0"),  # float64
        ([[1.0]], [[0.0], [-1.5e154]], "keys row 1"),
    ],
)
def test_rows_whose_squared_norm_overflows_raise(q, k, argument) -> None:
    """Finite rows whose ||x||^2 overflows the score type got the wrong index with no error (a key scored
    inf never won). Now a ValueError (not a NaN error: the values are finite) names the row."""
    dtype = torch.float64 if abs(q[0][0]) > 1e30 or abs(k[-1][0]) > 1e30 else torch.float32
    q, k = torch.tensor(q, dtype=dtype), torch.tensor(k, dtype=dtype)
    for search in (nn_argmin, reference.nn_argmin_addmm):
        with pytest.raises(ValueError, match=rf"^nn_argmin: {argument} has a squared L2 norm above") as info:
            search(q, k)
        assert not isinstance(info.value, NonFiniteError)
        assert "rescale" in str(info.value)
    # The remedy works: rescaled by a power of two, the search finds the nearest key up to the expansion's
    # documented rounding, about 1e-7 (float32) or 2e-16 (float64) of |q|^2 + |k|^2 (the module docstring).
    # The first case's keys lie 5 float32 ulps apart, far inside that: either is a right answer there, and
    # the SIMD copies order them differently (the baseline took key 0 where the test asked for key 1). In
    # every other case the nearest key lies far outside it and must be found.
    scale = 2.0**-64 if dtype == torch.float32 else 2.0**-520
    qs, ks = (q * scale).double(), (k * scale).double()
    got = nn_argmin(q * scale, k * scale)
    distances = ((qs[:, None, :] - ks[None, :, :]) ** 2).sum(-1)
    gap = distances.gather(1, got[:, None]).squeeze(1) - distances.min(1).values
    rounding = (1e-7 if dtype == torch.float32 else 2e-16) * (qs.square().sum(1) + ks.square().sum(1).max())
    assert bool((gap <= 4 * rounding).all()), (gap, rounding)
    two_nearest = distances.topk(2, largest=False).values
    if bool((two_nearest[:, 1] - two_nearest[:, 0] > 4 * rounding).all()):  # every case but the first
        assert torch.equal(got, _nearest_by_differences(q, k))
    nn_argmin(q, k, check_finite_values=False)  # unchecked: no error (the result is unspecified)


def test_norm_overflow_in_a_chunk_and_with_a_scorer_names_the_chunk_row() -> None:
    q = torch.randn(3, 4)
    k1 = torch.randn(6, 4)
    k1[4] = 1e19  # norm 2e19
    with pytest.raises(ValueError, match=r"^nn_argmin: keys\[1\] row 4 has a squared L2 norm above float32"):
        nn_argmin(q, [torch.randn(5, 4), k1])
    best = RunningArgmin(q, scores=reference.nn_argmin_scores_reference, check_finite=True)
    with pytest.raises(ValueError, match=r"^nn_argmin: keys\[1\] row 4 has a squared L2 norm"):
        best.update(k1, 5, name="keys[1]")
    # rows counted in the tensor that the name means: k1[2:] is keys[1] from its row 2
    for scores in (None, reference.nn_argmin_scores_reference):
        best = RunningArgmin(q, scores=scores, check_finite=True)
        with pytest.raises(ValueError, match=r"^nn_argmin: keys\[1\] row 4 has a squared L2 norm"):
            best.update(k1[2:], 7, name="keys[1]", row0=2)
    # A NaN row below the large one is still the NaN error.
    k1[2, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"keys\[1\] row 2 contains NaN"):
        nn_argmin(q, [torch.randn(5, 4), k1])
    # a NaN row of a slice, counted from its first row and worded alike, with a scorer or the fused search
    for scores in (None, reference.nn_argmin_scores_reference):
        best = RunningArgmin(q, scores=scores, check_finite=True)
        with pytest.raises(NonFiniteError, match=r"^nn_argmin: keys\[1\] row 2 contains NaN") as info:
            best.update(k1[1:], 6, name="keys[1]", row0=1)
        assert (info.value.argument, info.value.row) == ("keys[1]", 2)
    qn = q.clone()
    qn[1, 3] = float("inf")
    for scores in (None, reference.nn_argmin_scores_reference):
        with pytest.raises(NonFiniteError, match=r"^nn_argmin: queries row 1 contains NaN"):
            RunningArgmin(qn, scores=scores, check_finite=True).update(torch.randn(2, 4), 0)


def test_an_inputs_nan_row_comes_before_its_norm_on_every_path() -> None:
    """A NaN row after a too-large row: the CPU kernel stops at the lower (finite) row, which was raised as
    the norm error, where a scorer, check_squared_norms and CUDA's flags all name the NaN row. Every path
    now names the NaN row; and a call without queries checks its keys' norms too."""
    q, k = torch.randn(3, 4), torch.randn(8, 4)
    k[2], k[5, 0] = 1e20, float("nan")
    for scores in (None, reference.nn_argmin_scores_reference):
        with pytest.raises(NonFiniteError, match=r"^nn_argmin: keys row 5 contains NaN") as info:
            RunningArgmin(q, scores=scores, check_finite=True).update(k, 0)
        assert info.value.row == 5
    with pytest.raises(NonFiniteError, match=r"^nn_argmin: keys\[1\] row 5 contains NaN"):
        nn_argmin(q, [torch.randn(2, 4), k])
    k[5, 0] = 0.0
    with pytest.raises(ValueError, match=r"^nn_argmin: keys row 2 has a squared L2 norm above float32"):
        nn_argmin(q, k)
    with pytest.raises(ValueError, match=r"^nn_argmin: keys row 2 has a squared L2 norm above float32"):
        nn_argmin(q[:0], k)
    assert nn_argmin(q[:0], k, check_finite_values=False).shape == (0,)


def test_keys_split_into_native_calls_keep_their_global_rows(monkeypatch) -> None:
    """A key tensor longer than one native call takes (2^30 rows) is searched in slices: indices, NaN rows and
    too-large rows are still counted from the tensor's first row."""
    monkeypatch.setattr(sys.modules[RunningArgmin.__module__], "_MAX_KEYS_PER_CALL", 4)
    q, k = torch.randn(6, 3), torch.randn(10, 3)
    idx, dist = nn_argmin(q, k, return_distances=True)
    assert torch.equal(idx, reference.nn_argmin_exact(q, k))
    torch.testing.assert_close(dist, ((q - k[idx]) ** 2).sum(1))
    bad = k.clone()
    bad[6, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"keys row 6 contains NaN"):
        nn_argmin(q, bad)
    bad[6, 1], bad[5] = 0.0, 1e20
    with pytest.raises(ValueError, match=r"^nn_argmin: keys row 5 has a squared L2 norm above float32"):
        nn_argmin(q, bad)


def test_rows_just_inside_the_norm_bound_are_searched_exactly() -> None:
    """|x|^2 up to max/4 is accepted: 8e18 in float32 (|x|^2 = 6.4e37 <= 8.5e37), 6e153 in float64."""
    for big, dtype in ((8e18, torch.float32), (6e153, torch.float64)):
        q = torch.tensor([[big], [-big], [0.0]], dtype=dtype)
        k = torch.tensor([[-big], [0.0], [big]], dtype=dtype)
        assert torch.equal(nn_argmin(q, k), _nearest_by_differences(q, k))
        assert torch.equal(nn_argmin(q, k), torch.tensor([2, 0, 1]))


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("queries", "keys", "exc", "match"),
    [
        ([[1.0]], torch.randn(2, 1), TypeError, "queries must be a torch.Tensor"),
        (torch.randn(3), torch.randn(2, 3), ValueError, "queries must be a 2-D tensor"),
        (torch.randn(3, 2), torch.randn(2, 2, 1), ValueError, "keys must be a 2-D tensor"),
        (torch.randn(3, 2), torch.randn(4, 3), ValueError, "keys must have D=2"),
        (torch.randn(3, 2), torch.randn(0, 2), ValueError, "at least one row"),
        (torch.randn(3, 0), torch.randn(4, 0), ValueError, "at least one column"),
        (
            torch.randn(3, 2).half(),
            torch.randn(4, 2).half(),
            TypeError,
            r"queries has dtype float16, which nn_argmin searches on CUDA only; on the CPU convert .*\.float\(\)",
        ),
        (
            torch.randn(3, 2).bfloat16(),
            torch.randn(4, 2).bfloat16(),
            TypeError,
            "queries has dtype bfloat16",
        ),
        (np.ones((3, 2), np.float16), np.ones((4, 2), np.float16), TypeError, r"astype\(np.float32\)"),
        (np.ones((3, 2), object), np.ones((4, 2)), TypeError, "queries must be a numpy array of floats"),
        (torch.ones(3, 2, dtype=torch.int64), torch.ones(4, 2), TypeError, "queries must have dtype"),
        (torch.randn(3, 2), torch.randn(4, 2).double(), TypeError, "keys must have the same dtype"),
        (torch.randn(3, 2), "keys", TypeError, "keys must be a torch.Tensor, a numpy array or an iterable"),
        (
            torch.randn(3, 2),
            [torch.randn(2, 2), 5],
            TypeError,
            r"^keys\[1\] must be a torch.Tensor or a numpy array, got int",
        ),
        (np.ones((3, 2), np.float32), np.ones((4, 2)), TypeError, "keys must have the same dtype"),
        (torch.randn(3, 2), [torch.randn(2, 2), torch.randn(2, 3)], ValueError, r"keys\[1\] must have D=2"),
        (torch.randn(3, 2), [], ValueError, "at least one row"),
        # Empty keys and empty chunks are still checked (they skipped every check).
        (torch.zeros(2, 3), torch.randn(0, 5), ValueError, r"^keys must have D=3 columns like queries"),
        (torch.zeros(2, 3), torch.randn(0, 3).double(), TypeError, "^keys must have the same dtype"),
        (torch.randn(2, 3), [torch.randn(0, 7), torch.randn(2, 3)], ValueError, r"^keys\[0\] must have D=3"),
        (
            torch.randn(2, 3),
            [torch.randn(2, 3), torch.randn(0, 3).double()],
            TypeError,
            r"^keys\[1\] must have",
        ),
        (
            torch.randn(3, 2),
            [torch.randn(2, 2), torch.randn(3)],
            ValueError,
            r"^keys\[1\] must be a 2-D tensor",
        ),
    ],
)
def test_bad_arguments(queries, keys, exc, match) -> None:
    with pytest.raises(exc, match=match):
        nn_argmin(queries, keys)


def test_type_errors_name_numpy_only_where_numpy_is_taken() -> None:
    """nn_argmin([[0., 1.]], keys) said "queries must be a torch.Tensor", though numpy arrays are taken for
    queries (and keys); RunningArgmin.update takes tensors only and still says so."""
    keys = torch.randn(4, 2)
    with pytest.raises(TypeError, match=r"^queries must be a torch.Tensor or a numpy array, got list$"):
        nn_argmin([[0.0, 1.0]], keys)
    with pytest.raises(TypeError, match=r"^queries must be a torch.Tensor or a numpy array, got NoneType$"):
        nn_argmin(None, keys)
    with pytest.raises(TypeError, match=r"^keys must be a torch.Tensor, got ndarray$"):
        RunningArgmin(torch.randn(3, 2)).update(np.ones((4, 2), np.float32), 0)


@pytest.mark.parametrize("flag", ["return_distances", "check_finite_values"])
@pytest.mark.parametrize("value", ["yes", "no", 1, 0, None, 1.0])
def test_bool_flags_refuse_other_types(flag, value) -> None:
    """return_distances="yes" was taken silently (any truthy value asked for distances, "no" too), and a str
    check_finite_values reached the native call, whose error was a binding's signature dump."""
    q, k = torch.randn(3, 2), torch.randn(4, 2)
    want = rf"^{flag} must be a bool, got {type(value).__name__} {re.escape(repr(value))}$"
    with pytest.raises(TypeError, match=want):
        nn_argmin(q, k, **{flag: value})
    with pytest.raises(TypeError, match=want):
        nn_argmin(q.numpy(), k.numpy(), **{flag: value})


def test_bool_flags_take_numpy_bools_and_running_argmin_checks_its_own() -> None:
    q, k = torch.randn(5, 3), torch.randn(7, 3)
    index, dist = nn_argmin(q, k, return_distances=np.True_, check_finite_values=np.False_)
    want_index, want_dist = nn_argmin(q, k, return_distances=True)
    assert torch.equal(index, want_index) and torch.equal(dist, want_dist)
    best = RunningArgmin(q, return_distances=np.True_, check_finite=np.True_)
    best.update(k, 0)
    assert isinstance(best.result(), tuple)
    with pytest.raises(TypeError, match=r"^return_distances must be a bool, got str 'yes'$"):
        RunningArgmin(q, return_distances="yes")
    with pytest.raises(TypeError, match=r"^check_finite must be a bool, got int 1$"):
        RunningArgmin(q, check_finite=1)
    # 0-d bool tensors and arrays (what a comparison returns) were taken before the check and still are
    index, dist = nn_argmin(q, k, return_distances=torch.tensor(True), check_finite_values=np.array(True))
    assert torch.equal(index, want_index) and torch.equal(dist, want_dist)
    with pytest.raises(TypeError, match=r"^return_distances must be a bool, got Tensor"):
        nn_argmin(q, k, return_distances=torch.tensor([True]))


@pytest.mark.parametrize(
    ("where", "row", "argument"),
    [("queries", 3, "queries"), ("keys", 0, "keys"), ("keys", 17, "keys"), ("chunk", 2, "keys[1]")],
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_raises_naming_argument_and_row(where, row, argument, bad) -> None:
    q, k = torch.randn(6, 3), torch.randn(20, 3)
    target = q if where == "queries" else k
    target[row if where != "chunk" else 10 + row, 1] = bad
    target[row + 2 if where != "chunk" else 10 + row + 2, 0] = float("nan")  # a later bad row
    keys = list(k.split(10)) if where == "chunk" else k
    with pytest.raises(
        NonFiniteError, match=rf"^nn_argmin: {re.escape(argument)} row {row} contains NaN or Inf"
    ) as info:
        nn_argmin(q, keys)
    assert isinstance(info.value, ValueError)
    assert info.value.argument == argument and info.value.row == row
    nn_argmin(q, keys, check_finite_values=False)  # the check can be skipped


def test_mixed_devices() -> None:
    with pytest.raises(ValueError, match=r"keys must be on the same device as queries \(cpu\), got meta"):
        nn_argmin(torch.randn(3, 2), torch.randn(4, 2, device="meta"))


def test_registered_ops_refuse_a_meta_tensor_beside_a_real_one() -> None:
    """A direct call of the registered in-place ops that mixes a meta tensor with a CPU one is dispatched to
    the fake implementation, which left the running best unchanged with no error. The fakes now check the
    devices, by name."""
    ops, meta = torch.ops.glann_ext, torch.device("meta")
    q, k = torch.randn(3, 2), torch.randn(4, 2)
    best = (torch.full((3,), float("inf")), torch.zeros(3, dtype=torch.int64))
    for args, name, first in [
        ((q, k.to(meta), *best), "keys", "cpu"),
        ((q.to(meta), k, *(t.to(meta) for t in best)), "keys", "meta"),
        ((q.to(meta), k.to(meta), *best), "best_score", "meta"),
        ((q, k, best[0], best[1].to(meta)), "best_index", "cpu"),
    ]:
        with pytest.raises(
            ValueError, match=rf"^nn_argmin_fold_: {name} must be on the same device as queries \({first}\)"
        ):
            ops.nn_argmin_fold_(*args, 0)
    candidate = (torch.zeros(3), torch.zeros(3, dtype=torch.int64))
    for args, name, first in [
        ((*best, *(t.to(meta) for t in candidate)), "score", "cpu"),
        ((*(t.to(meta) for t in best), *candidate), "score", "meta"),
        ((*best, candidate[0], candidate[1].to(meta)), "index", "cpu"),
    ]:
        with pytest.raises(
            ValueError,
            match=rf"^nn_argmin_merge_: {name} must be on the same device as best_score \({first}\)",
        ):
            ops.nn_argmin_merge_(*args, 0)
    assert torch.equal(best[0], torch.full((3,), float("inf")))  # nothing was written


def test_meta_tensors_give_shapes_only() -> None:
    # torch.compile / meta tracing: the fake implementation makes outputs of the right shape.
    q, k = torch.randn(3, 2, device="meta"), torch.randn(4, 2, device="meta")
    idx = nn_argmin(q, k, check_finite_values=False)
    assert idx.shape == (3,) and idx.device.type == "meta"


# ------------------------------------------------------------------------------------------------ CUDA


@pytest.mark.cuda
@pytest.mark.parametrize(("n", "m", "d"), [*SHAPES, (4096, 65536, 64), (1000, 100000, 128)])
def test_cuda_matches_cpu(n: int, m: int, d: int) -> None:
    q, k = torch.randn(n, d), torch.randn(m, d)
    cpu_idx, _cpu_dist = nn_argmin(q, k, return_distances=True)
    idx, dist = nn_argmin(q.cuda(), k.cuda(), return_distances=True)
    # Same fmaf order on both sides: the scores, hence the indices, agree (rounding near-ties aside).
    assert (idx.cpu() == cpu_idx).double().mean() >= 0.999
    if n * m <= 10**7:
        assert_nearest(q, k, idx.cpu(), dist.cpu())


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision_inputs(dtype: torch.dtype) -> None:
    q, k = torch.randn(300, 64).to(dtype), torch.randn(5000, 64).to(dtype)
    idx = nn_argmin(q.cuda(), k.cuda())
    assert_nearest(q.float(), k.float(), idx.cpu())


@pytest.mark.cuda
def test_cuda_ties_strides_chunks() -> None:
    base = torch.randn(50, 8, device="cuda")
    assert torch.equal(nn_argmin(base, torch.cat([base, base, base])).cpu(), torch.arange(50))
    k = torch.randn(3000, 16, device="cuda")
    q = torch.randn(64, 32, device="cuda")[:, ::2]
    assert torch.equal(nn_argmin(q, k.t().contiguous().t()).cpu(), nn_argmin(q.cpu(), k.cpu()))
    assert torch.equal(nn_argmin(q, list(k.split(1000))), nn_argmin(q, k))


@pytest.mark.cuda
def test_cuda_non_default_stream_and_compile() -> None:
    q, k = torch.randn(500, 64, device="cuda"), torch.randn(20000, 64, device="cuda")
    ref = nn_argmin(q, k)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        q2, k2 = q * 1.0, k * 1.0  # produced on the side stream: the kernel must run after them
        got = nn_argmin(q2, k2)
    s.synchronize()
    assert torch.equal(got, ref)
    compiled = torch.compile(lambda a, b: nn_argmin(a, b, check_finite_values=False), mode="reduce-overhead")
    assert torch.equal(compiled(q, k), ref)


@pytest.mark.cuda
def test_cuda_ten_million_keys() -> None:
    q = torch.randn(256, 64, device="cuda")
    k = torch.randn(10_000_000, 64, device="cuda")
    k[9_999_999] = q[0]
    idx = nn_argmin(q, k)
    assert idx[0].item() == 9_999_999


@pytest.mark.cuda
def test_cuda_float64_matches_the_exact_oracle_and_ties() -> None:
    g = torch.Generator().manual_seed(8)
    q = torch.randn(500, 40, dtype=torch.float64, generator=g)
    k = torch.randn(7000, 40, dtype=torch.float64, generator=g)
    k[6000:6500] = q  # exact hits, higher copies ...
    k[100:600] = q  # ... and lower ones, which must win
    idx, dist = nn_argmin(q.cuda(), k.cuda(), return_distances=True)
    assert dist.dtype == torch.float64
    assert torch.equal(idx.cpu(), torch.arange(100, 600))
    assert torch.equal(dist.cpu(), torch.zeros(500, dtype=torch.float64))
    q2 = torch.randn(300, 17, dtype=torch.float64, generator=g)
    assert torch.equal(nn_argmin(q2.cuda(), k[:, :17].cuda()).cpu(), reference.nn_argmin_exact(q2, k[:, :17]))


@pytest.mark.cuda
def test_cuda_non_finite_is_deferred_to_a_later_call() -> None:
    """No synchronisation in the call: the kernels' flags are read once the device is done, by the next
    glann_ext call (which does not wait) or by raise_deferred_errors (which waits)."""
    q, k = torch.randn(50, 8, device="cuda"), torch.randn(4000, 8, device="cuda")
    k[3001, 2] = float("nan")
    k[3500, 0] = float("inf")
    nn_argmin(q, k)  # returns: nothing waited for the flags
    with pytest.raises(NonFiniteError, match="nn_argmin: keys row 3001") as info:
        glann_ext.ops.raise_deferred_errors(wait=True)
    assert info.value.argument == "keys" and info.value.row == 3001
    q[7, 7] = float("nan")
    k = k.nan_to_num(posinf=0.0)
    # Raised by the next op, whichever it is: here the second key block's fold, if the first one's flags
    # are read by then (a fast device), else the projection after the synchronisation.
    with pytest.raises(NonFiniteError, match="queries row 7"):  # noqa: PT012
        nn_argmin(q, [k[:10], k[10:]])
        torch.cuda.synchronize()
        glann_ext.project_to_sphere(torch.randn(3, 3, device="cuda"))
    glann_ext.ops.raise_deferred_errors(wait=True)  # nothing left


@pytest.mark.cuda
@pytest.mark.parametrize("kernels", ["legacy", "hopper"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_cuda_norm_overflow_is_deferred_naming_the_row(kernels, dtype) -> None:
    """Finite rows whose squared norm is above a quarter of the score type's maximum: on CUDA they were
    not detected (a wrong index with no error); the kernels that look for NaN/Inf now flag them too, and the
    deferred error names the argument and row, as the CPU's does at once. NaN in an input comes first."""
    big = 1e20 if dtype != torch.float64 else 1e155
    for argument, row in (("queries", 5), ("keys", 3001)):
        q, k = torch.randn(50, 8), torch.randn(4000, 8)
        (q if argument == "queries" else k)[row, 2] = big
        (q if argument == "queries" else k)[row + 1, 0] = -big  # a later row: the lowest is named
        if dtype != torch.bfloat16:  # the CPU's error, at once (the CPU refuses bfloat16)
            with pytest.raises(
                ValueError, match=rf"^nn_argmin: {argument} row {row} has a squared L2 norm above"
            ):
                nn_argmin(q.to(dtype), k.to(dtype))
        with use_cuda_kernels(kernels):
            nn_argmin(q.to("cuda", dtype), k.to("cuda", dtype))
            with pytest.raises(
                ValueError, match=rf"^nn_argmin: {argument} row {row} has a squared L2 norm"
            ) as info:
                glann_ext.ops.raise_deferred_errors(wait=True)
            assert not isinstance(info.value, NonFiniteError)
            k[10, 1] = float(
                "nan"
            )  # NaN in the keys: the keys' NaN error, unless the queries' norm comes first
            nn_argmin(q.to("cuda", dtype), k.to("cuda", dtype))
            want = (
                rf"queries row {row} has a squared" if argument == "queries" else r"keys row 10 contains NaN"
            )
            with pytest.raises(ValueError, match=want):
                glann_ext.ops.raise_deferred_errors(wait=True)
            nn_argmin(q.to("cuda", dtype), k.to("cuda", dtype), check_finite_values=False)  # unchecked
            glann_ext.ops.raise_deferred_errors(wait=True)  # nothing


def test_cuda_flags_read_as_the_cpus_errors_in_the_cpus_order() -> None:
    """The CUDA search's four flags (NaN/Inf rows of queries and keys, then rows whose norm overflows the
    scores) become the error the CPU raises: queries before keys, an input's NaN before its norm, rows
    counted from the slice's first row."""
    import glann_ext.ops.nn_argmin as nn_mod

    none = glann_ext.ops._native.NO_ROW
    make = nn_mod._flags_error("nn_argmin", ("queries", "keys[1]"), (0, 7), torch.float32)
    cases = [
        ([none, none, none, none], None),
        ([none, 4, 2, none], r"queries row 2 has a squared L2 norm above float32"),
        ([3, 4, 2, 1], r"queries row 3 contains NaN"),
        ([none, 4, none, 1], r"keys\[1\] row 11 contains NaN"),
        ([none, none, none, 1], r"keys\[1\] row 8 has a squared L2 norm above float32"),
    ]
    for values, want in cases:
        error = make(values)
        if want is None:
            assert error is None
        else:
            assert re.match(rf"^nn_argmin: {want}", str(error)), str(error)
    # Without a dtype (the two flags of a call without queries) only the NaN rows are read.
    assert "row 2 contains NaN" in str(
        nn_mod._flags_error("nn_argmin", ("queries", "keys"), (0, 0))([none, 2])
    )


def test_eager_fast_path_matches_the_registered_op(monkeypatch):
    """Plain tensors in eager mode call the fold's implementation directly; a dispatch mode (as tracing
    uses) sees the registered op. Both run the same kernel: the same indices and distances, ties included."""
    import glann_ext.ops.nn_argmin as nn_mod

    g = torch.Generator().manual_seed(0)
    q = torch.randint(-3, 4, (37, 5), generator=g).float()  # small integers: many exact ties
    k = torch.randint(-3, 4, (301, 5), generator=g).float()
    fast = nn_argmin(q, [k[:100], k[100:]], return_distances=True)

    with RecordOps() as mode:
        op = nn_argmin(q, [k[:100], k[100:]], return_distances=True)
    assert any("glann_ext.nn_argmin_fold_" in n for n in mode.names), mode.names
    assert torch.equal(fast[0], op[0]) and torch.equal(fast[1], op[1])

    def no_dispatch(*args):
        raise AssertionError("the eager path went through the dispatcher")

    monkeypatch.setattr(nn_mod, "_fold", no_dispatch)
    assert torch.equal(nn_argmin(q, k), fast[0])
