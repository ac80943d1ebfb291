"""Turns pytest-benchmark JSON files into the Markdown tables of benchmarks/RESULTS.md.

    pytest benchmarks --benchmark-json=bench.json
    python -m benchmarks.report bench.json > tables.md
    python -m benchmarks.report a.json b.json --targets --merged merged.json > tables.md

Several files are merged (the GPU check runs one pytest per op so that a stage cut short keeps the rows
already measured). Within each group the rows are sorted by median time, and every row's ratio is reported as
(row median / glann_ext median): above 1 means glann_ext is that many times faster, below 1 slower (the
group's first glann row in run order is the reference; e.g. 0.20x for ``glann_ext_bf16`` means the bfloat16
path takes a fifth of the float32 path's time). ``gflops`` and ``gbps`` columns are the achieved rates the
bench files record (their docstrings define the FLOP and byte counts); ``pct_fma_peak`` is the share of the
measured float32 FMA peak (float64 rows: of the float64 peak). ``--targets`` adds the issue-15 targets of the
CUDA kernels and the issue-16 targets of the CPU kernels, each met or missed by how much.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict


def _method(bench: dict) -> str:
    """The compared implementation: the ``method``/``impl``/``name`` parameter of the benchmark."""
    params = bench.get("params") or {}
    for key in ("method", "impl", "name"):
        if key in params:
            return str(params[key])
    name = bench["name"]  # "bench_x[cpu-4096x40960x64-torch_cdist_argmin]" -> "torch_cdist_argmin"
    inner = name[name.find("[") + 1 : name.rfind("]")] if "[" in name else name
    return inner.rsplit("-", 1)[-1]


def _is_ours(method: str) -> bool:
    return method.startswith("glann")


def merge(datas: list[dict]) -> dict:
    """One pytest-benchmark document holding the benchmarks of all ``datas`` (machine info of the first)."""
    if not datas:
        return {"benchmarks": []}
    merged = dict(datas[0])
    merged["benchmarks"] = [b for d in datas for b in d.get("benchmarks", [])]
    return merged


def _groups(data: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b.get("group") or b["name"]].append(b)
    return groups


def render(data: dict) -> str:
    groups = _groups(data)
    out = []
    machine = data.get("machine_info", {})
    out.append(
        f"Machine: {machine.get('cpu', {}).get('brand_raw', '?')}, {machine.get('cpu', {}).get('count', '?')} "
        f"logical CPUs; Python {machine.get('python_version', '?')}; run at {data.get('datetime', '?')}.\n"
    )
    if machine.get("gpu"):
        out.append("GPU: " + ", ".join(f"{k}={v}" for k, v in machine["gpu"].items()) + ".\n")
    for group in sorted(groups):
        # Ratios are against the group's first glann row in run order (the bench files list the
        # like-for-like glann call first, e.g. out-of-place projection before the in-place one).
        ours = [b for b in groups[group] if _is_ours(_method(b))]
        rows = sorted(groups[group], key=lambda b: b["stats"]["median"])
        ref = ours[0]["stats"]["median"] if ours else None
        extra_keys = sorted({k for b in rows for k in b.get("extra_info", {}) if k != "threads"})
        out.append(f"### {group}\n")
        header = ["method", "median (ms)", "glann_ext speed-up", *extra_keys]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for b in rows:
            med = b["stats"]["median"]
            ratio = f"{med / ref:.2f}x" if ref else "-"
            if ours and b is ours[0]:
                ratio = "1.00x (ours)"
            extras = [str(b.get("extra_info", {}).get(k, "")) for k in extra_keys]
            out.append("| " + " | ".join([_method(b), f"{med * 1000.0:.3f}", ratio, *extras]) + " |")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# The CUDA targets of issue 15
# --------------------------------------------------------------------------------------------------


def _medians(rows: list[dict]) -> dict[str, float]:
    return {_method(b): b["stats"]["median"] for b in rows}


def _gbps(rows: list[dict]) -> dict[str, float]:
    return {
        _method(b): b.get("extra_info", {}).get("gbps") for b in rows if b.get("extra_info", {}).get("gbps")
    }


def _verdict(value: float, goal: float) -> str:
    return f"met ({value:.2f} >= {goal:g})" if value >= goal else f"**missed by {goal / value:.2f}x**"


def targets(data: dict) -> str:
    """A Markdown table of the issue's CUDA targets, from the CUDA groups of ``data``."""
    groups = _groups(data)
    if not any(" cuda" in name for name in groups):
        return ""
    lines = ["| target | group | measured | verdict |", "|---|---|---|---|"]

    def row(target: str, group: str, value: float | None, goal: float, unit: str = "x") -> None:
        if value is None:
            lines.append(f"| {target} | {group} | not measured | - |")
        else:
            lines.append(f"| {target} | {group} | {value:.2f}{unit} | {_verdict(value, goal)} |")

    copy_gbps = max(
        (g.get("torch clone (memcpy bound)", 0) for name, rows in groups.items() if name.startswith("project cuda")
         for g in [_gbps(rows)]),
        default=0,
    )  # fmt: skip
    # Each target is read for both kernel variants: the legacy rows (glann_ext...) and the Hopper rows
    # (glann_ext_hopper...), which the switch of glann_ext.ops.kernels chooses between.
    variants = (("legacy", "glann_ext", "glann project_to_sphere"),
                ("hopper", "glann_ext_hopper", "glann project_to_sphere (hopper)"))  # fmt: skip
    for name, rows in sorted(groups.items()):
        med, gb = _medians(rows), _gbps(rows)
        m = re.match(r"nn_argmin cuda N=(\d+) M=(\d+) D=(\d+)", name)
        for variant, ours, project in variants:
            if m and ours in med:
                goal = 2.0 if int(m.group(3)) == 64 else 1.0
                if "torch_cdist_argmin" in med:
                    ratio = med["torch_cdist_argmin"] / med[ours]
                    row(f"nn_argmin fp32 ({variant}) >= {goal:g}x cdist().argmin()", name, ratio, goal)
                if ours + "_bf16" in med:
                    ratio = med[ours] / med[ours + "_bf16"]
                    row(f"nn_argmin bf16 ({variant}) >= 5x the fp32 path", name, ratio, 5.0)
            if name == "laplacian_pyramid_loss fwd+bwd cuda 64x3x64x64":
                eager = [med[k] for k in ("eager_slices", "eager_conv", "reference") if k in med]
                for method in (ours, ours + "_cuda_graph"):
                    if method in med:
                        ratio = min(eager) / med[method] if eager else None
                        row(f"Laplacian {method} fwd+bwd >= 10x the best torch eager", name, ratio, 10.0)
            if name == "laplacian_pyramid_loss fwd+bwd cuda 16x3x256x256":
                for method in (ours, ours + "_cuda_graph"):
                    if method in gb and copy_gbps:
                        pct = 100 * gb[method] / copy_gbps
                        row(f"Laplacian {method} >= 30% of the copy bandwidth", name, pct, 30.0, "%")
            if name.startswith("project cuda") and project in med and "torch clone (memcpy bound)" in med:
                pct = 100 * med["torch clone (memcpy bound)"] / med[project]
                row(f"projection ({variant}) >= 70% of a copy's bandwidth", name, pct, 70.0, "%")
    note = (
        f"Copy bandwidth (torch clone, read + write): {copy_gbps:.0f} GB/s."
        if copy_gbps
        else "Copy bandwidth: no CUDA projection group in this run."
    )
    return "\n".join(lines) + "\n\n" + note + "\n"


def cpu_targets(data: dict) -> str:
    """A Markdown table of issue 16's CPU targets, from the CPU groups of ``data``."""
    groups = _groups(data)
    lines = ["| target | group | measured | verdict |", "|---|---|---|---|"]
    for name, rows in sorted(groups.items()):
        med = _medians(rows)
        m = re.match(r"nn_argmin cpu N=(\d+) M=(\d+) D=(\d+)", name)
        if m and "glann_ext" in med:
            d = int(m.group(3))
            goal = 1.3 if d == 64 else 1.1
            bases = ("faiss_IndexFlatL2",) + (("torch_cdist_argmin",) if d >= 256 else ())
            lines.extend(
                f"| nn_argmin >= {goal:g}x {base} | {name} | {med[base] / med['glann_ext']:.2f}x | "
                f"{_verdict(med[base] / med['glann_ext'], goal)} |"
                for base in bases
                if base in med
            )
            for method in ("glann_ext", "glann_ext_1thread"):
                info = next((b.get("extra_info", {}) for b in rows if _method(b) == method), {})
                pct, best = info.get("pct_fma_peak"), info.get("pct_fma_peak_best")
                if d >= 256 and pct is not None:
                    # the verdict reads the median; the best round: what the kernel does when nothing interferes
                    also = f" (best round {best:.1f}%)" if best is not None else ""
                    t = info.get("threads", "?")
                    who = f"{method}, {t} thread{'' if t == 1 else 's'}"
                    lines.append(
                        f"| nn_argmin >= 85% of the FMA peak ({who}) | {name} | {pct:.1f}%{also} | "
                        f"{_verdict(pct, 85.0)} |"
                    )
        m = re.match(r"laplacian_pyramid_loss fwd\+bwd cpu ", name)
        eager = {k: med[k] for k in ("eager_slices", "eager_conv", "reference") if k in med}
        if m and "glann_ext" in med and eager:
            # against the fastest eager pyramid of the run, as the CUDA target reads it (before 2026-12-07
            # this table read `reference`, the index-arithmetic one, often the slowest)
            best = min(eager, key=eager.get)
            ratio = eager[best] / med["glann_ext"]
            gb = _gbps(rows).get("glann_ext")
            lines.append(
                f"| Laplacian fwd+bwd >= 20x the best torch eager pyramid ({best}) | {name} | {ratio:.1f}x "
                f"({gb} GB/s) | {_verdict(ratio, 20.0)} |"
            )
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="pytest-benchmark JSON files (merged)")
    parser.add_argument("--targets", action="store_true", help="append the issue-15 CUDA targets table")
    parser.add_argument("--merged", help="also write the merged JSON here")
    args = parser.parse_args(argv[1:])
    datas = []
    for path in args.files:
        # A part killed at its time limit can leave an empty or cut JSON file: the others still count.
        try:
            with open(path) as f:
                datas.append(json.load(f))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"report: skipped {path}: {exc}", file=sys.stderr)
    if not datas:
        print("report: no readable benchmark JSON", file=sys.stderr)
        return 1
    data = merge(datas)
    if args.merged:
        with open(args.merged, "w") as f:
            json.dump(data, f, indent=1)
    print(render(data))
    table = targets(data) if args.targets else ""
    if table:
        print("## Targets (issue 15)\n")
        print(table)
    cpu = cpu_targets(data) if args.targets else ""
    if cpu:
        print("## CPU targets (issue 16)\n")
        print(cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
