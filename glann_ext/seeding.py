"""Per-purpose random generators derived from the run seed, so that an epoch's shuffling and noise depend
only on (seed, stage, epoch) and a resumed run redraws exactly what the interrupted one drew."""

from __future__ import annotations

import math

import torch

_STAGES = {
    "init": 1, "glo": 2, "imle": 3, "sample": 4, "invert": 5, "imle_precision": 6, "balance": 7, "accept": 8,
    "spread": 9, "local_spread": 10,
}  # fmt: skip


# Rows per independently seeded block of a large random table (noise draws, random codes): any process
# can draw any rows by drawing only the blocks that hold them, so sharded runs draw what one process draws.
BLOCK_ROWS = 1 << 16


def generator(
    seed: int, stage: str, epoch: int = 0, device: str | torch.device = "cpu", block: int = 0
) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(
        (seed * 1_000_003 + _STAGES[stage] * 10_007 + epoch + block * 998_244_353) % 2**63
    )


def normal_rows(
    rows: torch.Tensor | range, total: int, dim: int, seed: int, stage: str, epoch: int = 0
) -> torch.Tensor:
    """Rows ``rows`` (indices into ``range(total)``) of a (total, dim) standard-normal table whose block
    ``b`` (rows ``[b * BLOCK_ROWS, ...)``) is drawn from ``generator(seed, stage, epoch, block=b)``.
    Only the blocks that hold the requested rows are drawn; the result is float32 (len(rows), dim)."""
    if isinstance(rows, range):
        if rows.step != 1:
            raise ValueError("normal_rows: a range of rows must have step 1")
        if len(rows) == 0:
            return torch.zeros(0, dim)
        blocks = range(rows.start // BLOCK_ROWS, (rows.stop - 1) // BLOCK_ROWS + 1)
        table = torch.cat([_block(b, total, dim, seed, stage, epoch) for b in blocks])
        return table[rows.start - blocks.start * BLOCK_ROWS : rows.stop - blocks.start * BLOCK_ROWS]
    rows = rows.to(torch.int64).cpu()
    out = torch.empty(len(rows), dim)
    block_of = rows // BLOCK_ROWS
    for b in block_of.unique().tolist():
        sel = (block_of == b).nonzero().squeeze(1)
        out[sel] = _block(b, total, dim, seed, stage, epoch)[rows[sel] - b * BLOCK_ROWS]
    return out


def _block(b: int, total: int, dim: int, seed: int, stage: str, epoch: int) -> torch.Tensor:
    n = min(BLOCK_ROWS, total - b * BLOCK_ROWS)
    return torch.randn(n, dim, generator=generator(seed, stage, epoch, block=b))


def block_normal(n: int, dim: int, seed: int, stage: str, block_rows: int) -> torch.Tensor:
    """(n, dim) float32 standard normals drawn in whole seeded blocks of ``block_rows`` rows (block ``b`` from
    ``generator(seed, stage, block=b)``), so row ``i`` is the same for every ``n > i``."""
    blocks = [
        torch.randn(block_rows, dim, generator=generator(seed, stage, block=b))
        for b in range(-(-n // block_rows))
    ]
    return torch.cat(blocks)[:n] if blocks else torch.zeros(0, dim)


def prefix_normal(
    n: int, dim: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``n`` standard-normal rows (n, dim) from ``generator`` whose first ``k`` rows are the same for every
    ``n >= k``, so the codes ``sample(k)`` decodes are the first ``k`` of ``sample(n)``'s (the images then
    agree up to the rounding of G's convolutions, which a batch's size may change, ~1e-7). A plain
    ``torch.randn(n, dim)`` is not:
    the CPU kernel turns uniforms into normals in blocks of 16 values, redraws a partial last block and takes
    another path below 16 values. So whole blocks are drawn (rows rounded up to a multiple of
    16 / gcd(dim, 16)) and cut; where ``n * dim`` is already a multiple of 16 this is exactly ``torch.randn``."""
    step = 16 // math.gcd(dim, 16) if dim > 0 else 1
    rows = -(-max(n, 1) // step) * step
    return torch.randn(rows, dim, generator=generator, dtype=dtype)[:n]


def epoch_permutation(n: int, seed: int, stage: str, epoch: int) -> torch.Tensor:
    """The order in which dataset indices are visited in ``epoch``: drawn on CPU, identical on any device."""
    return torch.randperm(n, generator=generator(seed, stage, epoch))


def num_batches(n: int, batch_size: int) -> int:
    """How many batches an epoch of ``n`` items has: the full batches (the remainder is dropped, as BatchNorm
    needs > 1 sample), or one batch of all items if there are at most ``batch_size``. Arithmetic, since the
    loop asks on every step."""
    return 1 if n <= batch_size else n // batch_size


def batches(perm: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The :func:`num_batches` batches of ``perm``, in order (views; at most ``batch_size`` items: all of them)."""
    return list(perm[: num_batches(len(perm), batch_size) * batch_size].split(batch_size))
