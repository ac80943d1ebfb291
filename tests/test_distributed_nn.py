"""glann_ext.distributed.nn_argmin on a 2-process gloo group equals single-process nn_argmin."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from glann_testing import free_port

import glann_ext
from glann_ext.distributed import nn_argmin as dist_nn_argmin


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
    raise ValueError(case)


CASES = ["uneven", "ties_across_border", "empty_shard"]
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
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results() -> dict:
    """One 2-process gloo group (spawning is the slow part) answers every case."""
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(WORLD, free_port(), out), nprocs=WORLD, join=True)
    return dict(out)


@pytest.mark.parametrize("case", CASES)
def test_two_process_gloo_equals_single_process(case: str, two_rank_results: dict) -> None:
    world = WORLD
    out = {r: two_rank_results[(case, r)] for r in range(world)}
    q, k, _, _query_sizes = _make_case(case)
    want_idx, want_d2 = glann_ext.nn_argmin(q, k, return_distances=True)
    got_idx = torch.cat([out[r][0] for r in range(world)])
    got_d2 = torch.cat([out[r][1] for r in range(world)])
    assert torch.equal(got_idx, want_idx)
    torch.testing.assert_close(got_d2, want_d2)


def test_needs_a_process_group() -> None:
    with pytest.raises(RuntimeError, match="initialised torch.distributed"):
        dist_nn_argmin(torch.randn(2, 3), torch.randn(4, 3))
