"""The process group a run trains in: one process, or a torch.distributed group (torchrun).

A run with W processes shards the dataset (and so the GLO code table, its optimizer state and the IMLE
targets) by dataset index into W contiguous blocks (:func:`glann_ext.data.shard_bounds`); the networks
(G, and T) are replicated with ``DistributedDataParallel``. The training schedule does not depend on W:
every epoch visits the same global batches as a single process would, and rank r trains on the members
of each global batch that it owns. With :class:`GlobalBatchNorm` (BatchNorm statistics over the whole
global batch) and losses normalised by the global batch size, W processes compute what one process
computes, up to the order of floating-point sums.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from glann_ext.data import shard_bounds
from glann_ext.errors import ConfigError


@dataclass(frozen=True)
class World:
    """Rank ``rank`` of ``size`` processes; ``size == 1`` (the default) makes every collective a no-op.

    ``group`` carries the data-parallel gradient traffic (DDP) and the code-level collectives;
    ``bn_group`` (a second group over the same ranks) carries the BatchNorm statistics, which run inside
    the autograd graph and so must not interleave with DDP's bucketed all-reduces on one communicator.
    """

    rank: int = 0
    size: int = 1
    group: Any = None
    bn_group: Any = None
    backend: str = "none"

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """The dataset rows ``[start, stop)`` owned by ``rank`` (default: this rank)."""
        return shard_bounds(n, self.size, self.rank if rank is None else rank)

    def all_bounds(self, n: int) -> list[tuple[int, int]]:
        return [shard_bounds(n, self.size, r) for r in range(self.size)]

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of ``t`` over ranks (in place; returned)."""
        if not self.distributed:
            return t
        if self.backend == "nccl" and t.device.type != "cuda":  # NCCL moves CUDA tensors only
            tmp = t.cuda()
            dist.all_reduce(tmp, group=self.group)
            return t.copy_(tmp)
        dist.all_reduce(t, group=self.group)
        return t

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.group)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order (collective; ``[value]`` for one process)."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value, group=self.group)
        return values

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (picklable), on every rank (collective)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


def disagreement(per_rank: list[dict[str, Any]], limit: int = 3) -> str | None:
    """What the ranks' ``{field: value}`` dicts (one per rank, same keys) disagree on, in one short line:
    "seed: rank 0 has 0, rank 1 has 5" (rank 0 and every rank that differs from it, for at most ``limit``
    fields); None when they all agree."""
    first = per_rank[0]
    parts = []
    for field, value in first.items():
        others = [(r, v[field]) for r, v in enumerate(per_rank) if v[field] != value]
        if others:
            shown = [(0, value), *others[:3]]
            more = f" ({len(others) - 3} more ranks differ)" if len(others) > 3 else ""
            has = ", ".join(f"rank {r} has {_short(v)}" for r, v in shown)
            parts.append(f"{field}: {has}{more}")
    if not parts:
        return None
    more = f"; and {len(parts) - limit} more fields" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo for CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def in_process_group() -> bool:
    """Whether this process is one of several: launched by torchrun, or in a process group of more."""
    grouped = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    return launched_by_torchrun() or grouped


def local_device(device: str) -> torch.device:
    """``device``, with plain ``"cuda"`` under torchrun meaning this process's GPU (``LOCAL_RANK``)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


TIMEOUT_ENV = "GLANN_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0
TIMEOUT_RANGE_S = (1.0, 7 * 86400.0)  # below a second every collective fails; timedelta overflows far above


def dist_timeout_s() -> float:
    """How long a collective waits for the other ranks before the run fails (seconds):
    ``$GLANN_DIST_TIMEOUT_S`` (1 second to 7 days), else 30 minutes. A rank that stops without exiting (a hung
    node, SIGSTOP) holds the others this long; an IMLE epoch's search on one rank must fit in it."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    low, high = TIMEOUT_RANGE_S
    if not low <= value <= high:
        raise ConfigError(
            f"${TIMEOUT_ENV} must be a number of seconds in [{low:g}, {high:g}], got {raw!r:.40}"
        )
    return value


def init_world(device: torch.device, timeout_s: float | None = None) -> World:
    """The :class:`World` of this process: an existing default process group, a new one when launched by
    torchrun (``WORLD_SIZE`` > 1; backend from :func:`backend_for`; collectives time out after ``timeout_s``,
    default :func:`dist_timeout_s`, those of the global BatchNorm's group too, also in a process group the
    caller made), else a single process."""
    if dist.is_available() and not dist.is_initialized() and launched_by_torchrun():
        timeout_s = dist_timeout_s() if timeout_s is None else timeout_s
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend_for(device), timeout=timedelta(seconds=timeout_s))
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return World()
    backend = str(dist.get_backend())
    if device.type == "cuda" and backend != "nccl" and "nccl" not in backend:
        raise ConfigError(f"device {device} needs the nccl backend, the process group uses {backend}")
    # the global BatchNorm's group waits as long as the default one (new_group's own default is torch's)
    timeout = timedelta(seconds=dist_timeout_s() if timeout_s is None else timeout_s)
    bn_group = dist.new_group(backend=backend, timeout=timeout)
    return World(dist.get_rank(), dist.get_world_size(), None, bn_group, backend)


def global_batch_part(batch: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """The members of a global ``batch`` of dataset indices that lie in ``[start, stop)``, in batch order,
    as local row numbers (index - start)."""
    mine = (batch >= start) & (batch < stop)
    return batch[mine] - start


# -- BatchNorm over the global batch ---------------------------------------------------------------------


class _GlobalMoments(torch.autograd.Function):
    """(mean, biased variance) per channel of ``x`` over every rank's rows: one all-gather of each rank's
    (count, mean, M2) combined with Chan et al.'s pairwise formula (exact and stable, no E[x^2] - E[x]^2
    cancellation); the backward is one all-reduce of the upstream gradients (every rank's outputs feed
    every rank's loss)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dims: list[int], group: Any, world_size: int):
        c = x.shape[1]
        n_local = x.numel() // max(c, 1)
        mean_local = x.mean(dims) if n_local else x.new_zeros(c)
        shape = [1, -1] + [1] * (x.dim() - 2)
        m2_local = (x - mean_local.reshape(shape)).square().sum(dims) if n_local else x.new_zeros(c)
        local = torch.cat([x.new_tensor([float(n_local)]), mean_local, m2_local])
        parts = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(parts, local, group=group)
        table = torch.stack(parts)
        counts, means, m2s = table[:, :1], table[:, 1 : c + 1], table[:, c + 1 :]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = (m2s.sum(0) + (counts * (means - mean).square()).sum(0)) / n
        ctx.save_for_backward(x, mean)
        ctx.n, ctx.group, ctx.shape = n, group, shape
        return mean, var, n

    @staticmethod
    def backward(ctx, g_mean: torch.Tensor | None, g_var: torch.Tensor | None, _g_n):
        x, mean = ctx.saved_tensors
        g_mean = torch.zeros_like(mean) if g_mean is None else g_mean
        g_var = torch.zeros_like(mean) if g_var is None else g_var
        g = torch.cat([g_mean, g_var]).contiguous()
        dist.all_reduce(g, group=ctx.group)
        c = mean.numel()
        g_mean, g_var = g[:c].reshape(ctx.shape), g[c:].reshape(ctx.shape)
        dx = (g_mean + 2.0 * g_var * (x - mean.reshape(ctx.shape))) / ctx.n
        return dx, None, None, None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch across the ranks of ``group``.

    Same parameters, buffers and state_dict keys as ``nn.BatchNorm1d/2d``, and the same running-statistics
    update (biased variance to normalise, unbiased into ``running_var``); eval mode is plain BatchNorm
    with no communication. Works on CPU (gloo) and CUDA (NCCL), with any number of rows per rank,
    including none. Unlike ``nn.SyncBatchNorm`` (CUDA only) it is a plain autograd graph around
    ``torch.distributed.nn.functional.all_reduce``, so the backward all-reduce is exact by construction.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, group: Any = None):
        if not bn.track_running_stats:  # eval mode normalises with them; the package's networks all keep them
            raise ValueError(
                f"GlobalBatchNorm needs a BatchNorm that tracks running statistics, got {bn} "
                "(track_running_stats=False)"
            )
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.group = group
        self.load_state_dict(bn.state_dict())
        if bn.affine:
            self.weight.requires_grad_(bn.weight.requires_grad)
            self.bias.requires_grad_(bn.bias.requires_grad)
        self.to(next(bn.buffers()).device)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3, 4, 5):
            raise ValueError(f"GlobalBatchNorm: expected a 2-D to 5-D input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        mean, var, n = _GlobalMoments.apply(xf, dims, self.group, dist.get_world_size(self.group))
        out = (xf - mean.reshape(shape)) * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        return out.to(x.dtype)


def global_batchnorm(module: nn.Module, world: World) -> nn.Module:
    """``module`` with every BatchNorm replaced by a :class:`GlobalBatchNorm` over ``world`` (in place for
    children; returns the module). A no-op for a single process."""
    if not world.distributed:
        return module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        return GlobalBatchNorm(module, world.bn_group)
    for name, child in module.named_children():
        setattr(module, name, global_batchnorm(child, world))
    return module


def data_parallel(module: nn.Module, world: World) -> nn.Module:
    """``module`` for training steps: itself for one process, else wrapped in DDP (gradients averaged over
    ranks; buffers are not broadcast, since GlobalBatchNorm keeps them equal on every rank)."""
    if not world.distributed:
        return module
    device = next(module.parameters()).device
    ddp = nn.parallel.DistributedDataParallel
    # torch >= 2.13 renames broadcast_buffers; syncing at init is harmless (replicas start equal)
    no_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else {"broadcast_buffers": False}
    )
    return ddp(
        module,
        device_ids=[device] if device.type == "cuda" else None,
        process_group=world.group,
        **no_sync,
    )
