"""glann_ext.distributed.nn_argmin on 2-process and 3-process gloo groups (and a 2-rank subgroup of 3) equals
single-process nn_argmin."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from glann_testing import free_port
from test_distributed_checks import spawn_bounded

import glann_ext
from glann_ext.distributed import nn_argmin as dist_nn_argmin
from glann_ext.errors import NonFiniteError
from glann_ext.ops.nn_argmin import RunningArgmin
from glann_ext.ops.reference import nn_argmin_scores_reference


def _make_case(case: str):
    g = torch.Generator().manual_seed(7)
    if case == "uneven":
        q = torch.randn(37, 16, generator=g)
        k = torch.randn(1001, 16, generator=g)
        return q, k, [600, 401], [20, 17]
    if case == "ties_across_border":
        q = torch.randn(30, 8, generator=g)
        k = torch.randn(200, 8, generator=g) + 30
        k[150:180] = q  # copies on rank 1 ...
        k[10:40] = q  # ... and lower copies on rank 0: rank 0's must win on both ranks
        return q, k, [100, 100], [15, 15]
    if case == "empty_shard":
        q = torch.randn(10, 4, generator=g)
        k = torch.randn(50, 4, generator=g)
        return q, k, [0, 50], [0, 10]
    if case == "float64":  # searched in float64 on both paths, ties across the border too
        q = torch.randn(25, 6, generator=g, dtype=torch.float64)
        k = torch.randn(300, 6, generator=g, dtype=torch.float64) + 5
        k[250:260], k[20:30] = q[:10], q[:10]
        return q, k, [130, 170], [12, 13]
    if case == "strided":  # column slices: the ring sends contiguous copies (gloo refuses others; found by
        # mutation testing: sending the keys as they came passed every test)
        q = torch.randn(12, 10, generator=g)[:, ::2]
        k = torch.randn(90, 10, generator=g)[:, 1::2]
        return q, k, [40, 50], [5, 7]
    raise ValueError(case)


CASES = ["uneven", "ties_across_border", "empty_shard", "float64", "strided"]
WORLD = 2


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        for case in CASES:
            q, k, key_sizes, query_sizes = _make_case(case)
            k_local = k.split(key_sizes)[rank]
            q_local = q.split(query_sizes)[rank]
            out[(case, rank)] = dist_nn_argmin(q_local, k_local, return_distances=True)
            out[(case, rank, "reference")] = dist_nn_argmin(
                q_local, k_local, return_distances=True, scores=nn_argmin_scores_reference
            )
        d = 4 + rank  # keys of another width on each rank: one clear error on both, not a hang in the ring
        try:
            dist_nn_argmin(torch.randn(3, d), torch.randn(5, d))
        except ValueError as exc:
            out[("width", rank)] = str(exc)
        dtype = torch.float64 if rank else torch.float32  # gloo aborted the process (other byte counts)
        try:
            dist_nn_argmin(torch.randn(3, 4, dtype=dtype), torch.randn(5, 4, dtype=dtype))
        except ValueError as exc:
            out[("dtype", rank)] = str(exc)
        try:  # no key on any rank: an error on every rank, not indices into nothing
            dist_nn_argmin(torch.randn(3, 4), torch.randn(0, 4))
        except ValueError as exc:
            out[("no keys", rank)] = str(exc)
    finally:
        dist.destroy_process_group()


THREE_RANK_SPLIT = ([300, 1, 700], [10, 0, 27])  # uneven keys and queries, a rank without queries


def _subgroup_worker(rank: int, world: int, port: int, out: dict) -> None:
    """All 3 ranks search together (with 3 ranks, each shard travels two hops of the ring in a fixed
    direction, which 2 ranks cannot tell apart); then ranks 1 and 2 search in their own group, whose ranks
    0 and 1 are global ranks 1 and 2."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        q, k, _, _ = _make_case("uneven")
        key_sizes, query_sizes = THREE_RANK_SPLIT
        out[("world", rank)] = dist_nn_argmin(q.split(query_sizes)[rank], k.split(key_sizes)[rank])
        group = dist.new_group([1, 2])  # every rank takes part in creating it
        if rank > 0:
            q, k, key_sizes, query_sizes = _make_case("uneven")
            part = rank - 1
            out[rank] = dist_nn_argmin(q.split(query_sizes)[part], k.split(key_sizes)[part], group=group)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results() -> dict:
    """One 2-process gloo group (spawning is the slow part) answers every case."""
    out = mp.Manager().dict()
    spawn_bounded(_worker, (WORLD, free_port(), out), WORLD)
    return dict(out)


@pytest.mark.parametrize("case", CASES)
def test_two_process_gloo_equals_single_process(case: str, two_rank_results: dict) -> None:
    world = WORLD
    q, k, _, _query_sizes = _make_case(case)
    want_idx, want_d2 = glann_ext.nn_argmin(q, k, return_distances=True)
    assert want_d2.dtype == q.dtype
    for key in ((), ("reference",)):
        got_idx = torch.cat([two_rank_results[(case, r, *key)][0] for r in range(world)])
        got_d2 = torch.cat([two_rank_results[(case, r, *key)][1] for r in range(world)])
        assert torch.equal(got_idx, want_idx)
        assert got_d2.dtype == q.dtype
        torch.testing.assert_close(got_d2, want_d2)


def test_keys_of_another_width_on_some_rank_are_one_error_on_every_rank(two_rank_results: dict) -> None:
    for rank in range(WORLD):
        assert (
            two_rank_results[("width", rank)]
            == "local_keys must have the same D on every rank, got D values [4, 5]"
        )


def test_keys_of_another_dtype_on_some_rank_are_one_error_on_every_rank(two_rank_results: dict) -> None:
    for rank in range(WORLD):
        assert two_rank_results[("dtype", rank)] == (
            "local_keys and queries must have the same dtype on every rank, got rank 0: torch.float32, "
            "rank 1: torch.float64"
        )


def test_no_key_on_any_rank_is_one_error_on_every_rank(two_rank_results: dict) -> None:
    for rank in range(WORLD):
        assert (
            two_rank_results[("no keys", rank)]
            == "local_keys must hold at least one row on some rank, got M=0 in total"
        )


def test_three_ranks_and_a_subgroup_pass_keys_between_their_own_members() -> None:
    out = mp.Manager().dict()
    spawn_bounded(_subgroup_worker, (3, free_port(), out), 3)
    q, k, _, _ = _make_case("uneven")
    want = glann_ext.nn_argmin(q, k)
    assert torch.equal(torch.cat([out[("world", r)] for r in range(3)]), want)
    assert (want[:10] >= 300).any() and (want[10:] < 300).any()  # keys found on other ranks, both ways
    assert torch.equal(torch.cat([out[1], out[2]]), want)


def test_needs_a_process_group() -> None:
    with pytest.raises(RuntimeError, match=r"initialised torch\.distributed"):
        dist_nn_argmin(torch.randn(2, 3), torch.randn(4, 3))


def test_non_finite_queries_or_keys_are_named_before_any_collective() -> None:
    """NaN/Inf in this rank's queries or keys is the package's NonFiniteError, naming the argument and its row,
    raised before the ring starts (so also without a process group); check_finite_values=False skips it.
    Found by mutation testing: dropping either check passed every test."""
    q, k = torch.randn(4, 3), torch.randn(6, 3)
    q[2, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^queries row 2 contains NaN or Inf") as info:
        dist_nn_argmin(q, k)
    assert (info.value.argument, info.value.row) == ("queries", 2)
    k[5, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"^local_keys row 5 contains NaN or Inf"):
        dist_nn_argmin(torch.randn(4, 3), k)
    with pytest.raises(RuntimeError, match=r"initialised torch\.distributed"):
        dist_nn_argmin(q, k, check_finite_values=False)
    # Finite rows whose squared norm would overflow the scores: the search's ValueError (the ring ran them
    # unchecked, a wrong index with no error).
    big = torch.randn(6, 3)
    big[4] = 1e20
    with pytest.raises(ValueError, match=r"^nn_argmin: local_keys row 4 has a squared L2 norm above float32"):
        dist_nn_argmin(torch.randn(4, 3), big)
    with pytest.raises(ValueError, match=r"^nn_argmin: queries row 1 has a squared L2 norm above float32"):
        dist_nn_argmin(big[3:], torch.randn(4, 3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_running_argmin_reference_scores_equal_fused_with_ties_in_any_order(seed: int) -> None:
    # Small integers: every score is exact in float32 on both paths, so exact ties abound, within a
    # chunk and across chunks; chunks of uneven sizes (an empty one too) arrive in a random order.
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-2, 3, (70, 3), generator=g).float()
    k = torch.randint(-2, 3, (600, 3), generator=g).float()
    k[550:] = k[:50]  # exact duplicates, the higher copies in the last chunk
    bounds = [0, 90, 90, 250, 251, 480, 600]
    chunks = [(bounds[i], k[bounds[i] : bounds[i + 1]]) for i in range(len(bounds) - 1)]
    d2 = ((q[:, None, :] - k[None, :, :]) ** 2).sum(-1)
    want = d2.argmin(1)  # first minimum: the lowest index
    assert torch.equal(d2[torch.arange(70), want], d2.min(1).values)
    for trial in range(4):
        order = torch.randperm(len(chunks), generator=g).tolist() if trial else list(range(len(chunks)))[::-1]
        fused = RunningArgmin(q, return_distances=True)
        ref = RunningArgmin(q, return_distances=True, scores=nn_argmin_scores_reference)
        for i in order:
            offset, chunk = chunks[i]
            fused.update(chunk, offset)
            ref.update(chunk, offset)
        (fi, fd), (ri, rd) = fused.result(), ref.result()
        assert torch.equal(fi, want) and torch.equal(ri, want)
        assert torch.equal(fd, rd) and torch.equal(fd.double(), d2.min(1).values)
        assert torch.equal(fused.score, ref.score)


def test_reference_scores_contract() -> None:
    g = torch.Generator().manual_seed(5)
    q = torch.randint(-3, 4, (9, 4), generator=g).float()
    k = torch.randint(-3, 4, (50, 4), generator=g).float()
    score, index = nn_argmin_scores_reference(q, torch.cat([k, k]), tile=7)  # copies in other tiles
    assert score.dtype == torch.float32 and index.dtype == torch.int64 and score.shape == index.shape == (9,)
    full = (k * k).sum(1)[None] - 2 * q @ k.t()  # exact: small integers
    assert torch.equal(score, full.min(1).values)
    assert torch.equal(index, full.argmin(1))  # the first of equal scores, never a copy


@pytest.mark.parametrize(
    ("bad", "exc", "match"),
    [
        (lambda s, i: (s.double(), i), TypeError, r"scores\(\.\.\.\)\[0\] must have dtype in \(float32\)"),
        (lambda s, i: (s.float(), i), TypeError, r"scores\(\.\.\.\)\[0\] must have dtype in \(float64\)"),
        (lambda s, i: (s, i.int()), TypeError, r"scores\(\.\.\.\)\[1\] must have dtype in \(int64\)"),
        (lambda s, i: (s[:-1], i), ValueError, r"scores\(\.\.\.\)\[0\] must have shape \(5,\)"),
    ],
)
def test_running_argmin_checks_what_scores_returns(bad, exc, match) -> None:
    dtype = torch.float64 if "float64" in match else torch.float32  # scores follow the queries' dtype
    q, k = torch.randn(5, 3, dtype=dtype), torch.randn(8, 3, dtype=dtype)
    best = RunningArgmin(q, scores=lambda a, b: bad(*nn_argmin_scores_reference(a, b)))
    with pytest.raises(exc, match=match):
        best.update(k, 0)
