"""Exact nearest neighbours across processes (torch.distributed), for the IMLE step of a sharded run.

Every rank holds its queries (e.g. its shard of the GLO codes) and its share of the keys (its share of
the noise samples T(e)). :func:`nn_argmin` finds, for every local query, the nearest key over *all*
ranks, with ties going to the lowest global index: the result equals single-process
:func:`glann_ext.nn_argmin` over the keys of ranks 0, 1, ..., W-1 concatenated.

Algorithm: a ring. Key shard sizes are all-gathered once (global index = rank offset + local index);
then W steps, in each of which a rank searches the shard it holds while it passes that shard to the
next rank and receives the previous rank's. A running (score, global index) minimum makes the
arrival order irrelevant (see ``RunningArgmin``).

Communication: every rank sends and receives W - 1 shards, (W - 1) / W * M * D * itemsize bytes per
rank for M keys in total; memory per rank is O(local queries + two key shards). Works with gloo (CPU)
and NCCL (CUDA): tensors stay on their device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from .ops._checks import check_finite, check_squared_norms
from .ops.nn_argmin import RunningArgmin, check_keys, check_queries

Scores = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def nn_argmin(
    queries: torch.Tensor,
    local_keys: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    *,
    return_distances: bool = False,
    check_finite_values: bool = True,
    scores: Scores | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Global-index nearest key for every local query row, over the keys of every rank in ``group``.

    Args:
        queries: this rank's (n_r, D) queries (n_r may differ per rank, and be 0).
        local_keys: this rank's (m_r, D) keys, same dtype and device as queries (m_r may be 0 on some
            ranks, but the total must be >= 1). D, dtype and device must agree across ranks.
        group: the process group (default: the world).
        return_distances: also return the exact squared distances (float64 for float64 inputs, float32
            otherwise, as :func:`glann_ext.nn_argmin`).
        check_finite_values: before any collective, raise ``NonFiniteError`` for a NaN/Inf row and
            ``ValueError`` for a finite row whose squared norm could overflow the scores (as
            :func:`glann_ext.nn_argmin` does), naming the argument and this rank's row; False skips both.
        scores: how one rank's keys are searched: ``(queries, keys) -> (best score ||k||^2 - 2 q.k, its
            lowest index)``; None (default) is the fused kernel, ``glann_ext.ops.reference.
            nn_argmin_scores_reference`` the plain PyTorch reference (what ``--ops reference`` uses).

    Returns:
        (n_r,) int64 global indices into the concatenation of all ranks' keys in rank order
        (and distances). Collective: every rank in the group must call it.
    """
    queries = check_queries(queries)
    local_keys = check_keys("local_keys", local_keys, queries)
    if check_finite_values:  # NaN/Inf, then finite rows too large to score (nn_argmin's ValueError)
        for name, t in (("queries", queries), ("local_keys", local_keys)):
            check_finite(name, t)
            check_squared_norms("nn_argmin", name, t)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "glann_ext.distributed.nn_argmin needs an initialised torch.distributed process group"
        )
    sizes = _key_counts(local_keys, group)
    offsets = [sum(sizes[:r]) for r in range(len(sizes))]
    best = RunningArgmin(queries, return_distances=return_distances, scores=scores)
    _ring(best, local_keys.contiguous(), sizes, offsets, group)
    return best.result()


# dtypes and device types as numbers, so one all-gather of int64s checks them with the shapes
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_DEVICE_TYPES = ("cpu", "cuda")


def _key_counts(local_keys: torch.Tensor, group: dist.ProcessGroup | None) -> list[int]:
    """Every rank's number of keys (all-gathered), after checking that D, the dtype and the device type
    agree (one all-gather: a rank whose keys differ would otherwise break the ring's transfers, or abort
    the process inside gloo) and that M >= 1 in total. Raises the same ValueError on every rank."""
    world = dist.get_world_size(group)
    dtype = _DTYPES.index(local_keys.dtype) if local_keys.dtype in _DTYPES else len(_DTYPES)
    dev = local_keys.device.type
    device = _DEVICE_TYPES.index(dev) if dev in _DEVICE_TYPES else len(_DEVICE_TYPES)
    counts = torch.tensor([*local_keys.shape, dtype, device], dtype=torch.int64, device=local_keys.device)
    gathered = [torch.empty_like(counts) for _ in range(world)]
    dist.all_gather(gathered, counts, group=group)
    sizes = [int(c[0]) for c in gathered]
    dims = {int(c[1]) for c in gathered}
    if len(dims) != 1:
        raise ValueError(f"local_keys must have the same D on every rank, got D values {sorted(dims)}")
    for what, column, names in (("dtype", 2, _DTYPES), ("device type", 3, _DEVICE_TYPES)):
        codes = [int(c[column]) for c in gathered]
        if len(set(codes)) != 1:
            has = ", ".join(
                f"rank {r}: {names[code] if code < len(names) else 'another'}" for r, code in enumerate(codes)
            )
            raise ValueError(f"local_keys and queries must have the same {what} on every rank, got {has}")
    if sum(sizes) == 0:
        raise ValueError("local_keys must hold at least one row on some rank, got M=0 in total")
    return sizes


def _ring(best: RunningArgmin, current: torch.Tensor, sizes: list[int], offsets: list[int], group) -> None:
    """W steps: search the key shard held while passing it on to the next rank and receiving the previous
    rank's, folding each into ``best`` at its global offset."""
    world, rank, device = dist.get_world_size(group), dist.get_rank(group), current.device
    owner = rank
    send_to, recv_from = (rank + 1) % world, (rank - 1) % world
    for step in range(world):
        pending = []
        if step < world - 1:
            incoming_owner = (rank - step - 1) % world
            incoming = torch.empty(
                (sizes[incoming_owner], current.shape[1]), dtype=current.dtype, device=device
            )
            pending = dist.batch_isend_irecv(
                [
                    dist.P2POp(dist.isend, current, _global_rank(send_to, group), group=group),
                    dist.P2POp(dist.irecv, incoming, _global_rank(recv_from, group), group=group),
                ]
            )
        best.update(current, offsets[owner])  # overlaps with the transfer
        for req in pending:
            req.wait()
        if step < world - 1:
            current, owner = incoming, incoming_owner


def _global_rank(group_rank: int, group: dist.ProcessGroup | None) -> int:
    if group is None:
        return group_rank
    return dist.get_global_rank(group, group_rank)
