"""The CPU ops when a core is taken: a GLO epoch and an nn_argmin with a one-core busy process beside them.

    python -m benchmarks.bench_contention                  # laptop preset, 5,000 Fashion-MNIST images
    python -m benchmarks.bench_contention --limit 2000 --repeats 1 --json out.json

Issue 13, item 8: on a 2-core machine with one other busy process, a GLO epoch of the laptop preset took
1.7 s with ``--threads 1`` but 17.6 s (first epoch) and 5.1 s with ``--threads 2``. For every combination of
OpenMP policy (``glann_ext``: glann_ext imported before torch, so torch's libgomp threads sleep when idle,
see glann_ext/_info.py; ``torch default``: torch imported first, its threads spin after every parallel
region), load (``quiet``, ``busy``: one extra process spinning on a core for the whole measurement), ops
(``fused``, ``reference``) and threads (1, 2) a fresh interpreter (its own thread pools) sets
``torch.set_num_threads(threads)`` and times

* ``glo first`` / ``glo``: the first and the best of the following GLO epochs of the laptop preset
  (:class:`glann_ext.train.GLOTrainer` + :func:`glann_ext.train.run_epoch`, as ``glann train`` runs them);
* ``nn``: the exact search of the IMLE step, N codes against M = 2N noise outputs, D = 64, through the same
  ``Ops`` object (best of ``--repeats``).

The table gives seconds and, per load and ops, the ratio threads 2 / threads 1. Targets: fused with 2
threads at most 1.2x fused with 1 thread under load, never slower than the reference path under the same
load and threads, and no loss when the machine is quiet. Timing is only meaningful when nothing else runs:
the header records ``os.getloadavg()`` before the run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time

WORKLOADS = ("glo first", "glo", "nn")


POLICIES = ("glann_ext", "torch default")


def _worker(args: argparse.Namespace) -> dict:
    """One configuration in this interpreter: threads set before any op runs."""
    # torch first: glann_ext's OpenMP default comes too late to apply (glann_ext/_info.py).
    order = ("torch", "glann_ext") if args.policy == "torch default" else ("glann_ext", "torch")
    for name in order:
        importlib.import_module(name)
    import torch

    import glann_ext

    torch.set_num_threads(args.threads)
    from glann_ext.data import load_images
    from glann_ext.train import GLOTrainer, get_ops, run_epoch
    from glann_ext.train.config import preset

    cfg = preset("laptop", limit=args.limit, threads=None, ops=args.ops, device="cpu", sample_every=0)
    ops = get_ops(args.ops)
    images = load_images(cfg.dataset, limit=args.limit)
    glo = GLOTrainer(images, cfg, ops, torch.device("cpu"))
    epochs = []
    for _ in range(1 + args.repeats):
        t0 = time.perf_counter()
        run_epoch(glo)
        epochs.append(time.perf_counter() - t0)
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(args.limit, cfg.latent_dim, generator=g)
    noise = torch.randn(2 * args.limit, cfg.latent_dim, generator=g)
    ops.nn_argmin(codes, noise)  # warm-up
    searches = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ops.nn_argmin(codes, noise)
        searches.append(time.perf_counter() - t0)
    return {
        "glo first": epochs[0],
        "glo": min(epochs[1:]),
        "nn": min(searches),
        "steps": glo.steps_per_epoch,
        "omp_wait_policy": glann_ext.build_info()["omp_wait_policy"],
    }


def _run(policy: str, ops: str, threads: int, busy: bool, args: argparse.Namespace) -> dict:
    """A fresh interpreter for one configuration, with a spinning process beside it when ``busy``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        cmd = [sys.executable, "-m", "benchmarks.bench_contention", "--worker", "--ops", ops, "--policy", policy,
               "--threads", str(threads), "--limit", str(args.limit), "--repeats", str(args.repeats)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=args.cwd, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def _table(results: dict, args: argparse.Namespace) -> str:
    lines = [
        (
            f"GLO epoch of the laptop preset on {args.limit} Fashion-MNIST images; nn_argmin {args.limit} x "
            f"{2 * args.limit} x 64. Load average before the run: {args.load:.2f}. Seconds; ratio = threads 2 / 1."
        ),
        "",
        "| OpenMP threads | load | ops | work | threads 1 (s) | threads 2 (s) | threads 2 / 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for policy in args.policies:
        for load in ("quiet", "busy"):
            for ops in ("fused", "reference"):
                for work in WORKLOADS:
                    t1, t2 = (results[(policy, load, ops, t)][work] for t in (1, 2))
                    lines.append(
                        f"| {policy} | {load} | {ops} | {work} | {t1:.3f} | {t2:.3f} | {t2 / t1:.2f}x |"
                    )
    return "\n".join(lines)


def _verdicts(results: dict) -> str:
    """The issue's targets (with glann_ext's OpenMP default), each with its measured ratio."""
    lines = ["", "| target (glann_ext imported first) | work | measured | met |", "|---|---|---|---|"]
    for work in WORKLOADS:
        fused = {t: results[("glann_ext", "busy", "fused", t)][work] for t in (1, 2)}
        ref = {t: results[("glann_ext", "busy", "reference", t)][work] for t in (1, 2)}
        quiet = {t: results[("glann_ext", "quiet", "fused", t)][work] for t in (1, 2)}
        checks = [
            (
                "busy: fused threads 2 <= 1.2 x fused threads 1",
                fused[2] / fused[1],
                fused[2] <= 1.2 * fused[1],
            ),
            ("busy: fused <= reference, threads 2", fused[2] / ref[2], fused[2] <= ref[2]),
            ("busy: fused <= reference, threads 1", fused[1] / ref[1], fused[1] <= ref[1]),
            ("quiet: fused threads 2 <= fused threads 1", quiet[2] / quiet[1], quiet[2] <= quiet[1]),
        ]
        for name, ratio, ok in checks:
            lines.append(f"| {name} | {work} | {ratio:.2f}x | {'yes' if ok else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=5000, help="Fashion-MNIST images (N)")
    p.add_argument("--repeats", type=int, default=2, help="GLO epochs after the first, and searches")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument(
        "--policies", nargs="+", default=list(POLICIES), choices=POLICIES, help="OpenMP policies to compare"
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ops", default="fused", help=argparse.SUPPRESS)
    p.add_argument("--policy", default="glann_ext", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    args.cwd = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args.load = os.getloadavg()[0]
    results = {}
    for policy in args.policies:
        for load in ("quiet", "busy"):
            for ops in ("fused", "reference"):
                for threads in (1, 2):
                    key = (policy, load, ops, threads)
                    results[key] = _run(policy, ops, threads, load == "busy", args)
                    print(" ".join(map(str, key)), results[key], file=sys.stderr, flush=True)
    print(_table(results, args))
    if "glann_ext" in args.policies:
        print(_verdicts(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({" ".join(map(str, k)): v for k, v in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
