"""Distributed GLANN on this machine: the exact NN step and one GLO / IMLE epoch with 1 and 2 processes.

    python -m benchmarks.distributed                       # Fashion-MNIST, 10k images, laptop preset
    python -m benchmarks.distributed --limit 2000 --quick  # a minute
    python -m benchmarks.distributed --device cuda --world-sizes 1 2 4 8   # on a GPU node (NCCL)

Every configuration runs in freshly spawned processes (gloo on CPU, NCCL on CUDA, localhost) with the
same total number of CPU threads (``--threads`` split evenly), so on a 2-core machine 2 processes can at
best match 1; what the numbers show is the overhead of the collectives at equal compute. Prints one
Markdown table with measured times and the bytes each rank sends as predicted by docs/SCALING.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(world, fn, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, all ranks starting together."""
    times = []
    for _ in range(repeats):
        world.barrier()
        t0 = time.perf_counter()
        fn()
        world.barrier()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _worker(rank: int, size: int, port: int, args: argparse.Namespace, out: dict) -> None:
    from glann_ext.data import load_image_shard
    from glann_ext.train import GLOTrainer, IMLETrainer, get_ops, run_epoch
    from glann_ext.train.build import build_mapping
    from glann_ext.train.config import preset
    from glann_ext.train.world import World, init_world, local_device

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    device = local_device(args.device)
    if size > 1:
        if device.type == "cuda":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=size)
    torch.set_num_threads(max(1, args.threads // size))
    world = init_world(device) if size > 1 else World()
    try:
        cfg = preset("laptop", limit=args.limit, threads=None, device=str(device), sample_every=0)
        ops = get_ops("fused")
        # the exact NN step: N codes against M = 2N noise outputs, latent 64
        g = torch.Generator().manual_seed(0)
        n, m, d = args.limit, 2 * args.limit, cfg.latent_dim
        codes = torch.randn(n, d, generator=g)
        keys = torch.randn(m, d, generator=g)
        lo, hi = world.bounds(n)
        klo, khi = world.bounds(m)
        q, k = codes[lo:hi].to(device), keys[klo:khi].to(device).contiguous()
        nn_s = _timed(world, lambda: ops.nn_argmin(q, k, world=world), args.repeats)
        # the alpha-beta model of docs/SCALING.md: latency of a tiny all-reduce, time of a 4 MB one
        small, big = torch.zeros(8, device=device), torch.zeros(1 << 20, device=device)
        latency_s = _timed(world, lambda: [world.sum(small) for _ in range(100)], args.repeats) / 100
        allreduce_4mb_s = _timed(world, lambda: [world.sum(big) for _ in range(10)], args.repeats) / 10

        shard = load_image_shard(cfg.dataset, world.rank, world.size, limit=args.limit)
        glo = GLOTrainer(shard.images, cfg, ops, device, world, shard.start, shard.total)
        glo_s = _timed(world, lambda: run_epoch(glo), 1)
        T = build_mapping(cfg)
        imle = IMLETrainer(glo.codes, T, cfg, ops, device, world=world, start=shard.start, total=shard.total)
        run_epoch(imle)  # warm-up (first-call costs)
        imle_s = _timed(world, lambda: run_epoch(imle), args.repeats)
        g_params = sum(p.numel() for p in glo.G.parameters())
        t_params = sum(p.numel() for p in T.parameters())
        if world.is_main:
            out[size] = {
                "nn_s": nn_s,
                "latency_s": latency_s,
                "allreduce_4mb_s": allreduce_4mb_s,
                "glo_s": glo_s,
                "imle_s": imle_s,
                "g_params": g_params,
                "t_params": t_params,
                "steps": glo.steps_per_epoch,
                "n": shard.total,
                "d": d,
            }
    finally:
        if size > 1:
            dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=10000, help="Fashion-MNIST images (N)")
    p.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=2, help="CPU threads in all, split between processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one repeat")
    args = p.parse_args()
    if args.quick:
        args.repeats = 1
    out = mp.Manager().dict()
    for size in args.world_sizes:
        mp.spawn(_worker, args=(size, _free_port(), args, out), nprocs=size, join=True)
    base = out[args.world_sizes[0]]
    n, d = base["n"], base["d"]
    print(f"N = {n} Fashion-MNIST images, latent {d}, M = 2N, laptop preset, {args.threads} threads in all, "
          f"device {args.device}\n")  # fmt: skip
    print("| processes | NN step (s) | GLO epoch (s) | IMLE epoch (s) | NN bytes sent / rank | "
          "GLO bytes sent / rank / epoch |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    rows_after = []
    for size in args.world_sizes:
        r = out[size]
        w = size
        nn_bytes = (w - 1) / w * 2 * n * d * 4  # ring: W-1 key shards of M/W rows
        glo_bytes = 2 * (w - 1) / w * r["g_params"] * 4 * r["steps"]  # ring all-reduce of G's gradients
        cells = " | ".join(f"{r[k]:.3f} ({base[k] / r[k]:.2f}x)" for k in ("nn_s", "glo_s", "imle_s"))
        print(f"| {size} | {cells} | "
              f"{nn_bytes / 1e6:.1f} MB | {glo_bytes / 1e6:.1f} MB |")  # fmt: skip
        if size > 1:
            rows_after.append(
                f"| {size} | {r['latency_s'] * 1e6:.0f} us | {r['allreduce_4mb_s'] * 1e3:.2f} ms "
                f"({2 * (size - 1) / size * 4 / r['allreduce_4mb_s'] / 1e3:.2f} GB/s bus) |"
            )
    if rows_after:
        print("\n| processes | all-reduce of 8 floats | all-reduce of 4 MB |\n|---|---|---|")
        print("\n".join(rows_after))


if __name__ == "__main__":
    main()
