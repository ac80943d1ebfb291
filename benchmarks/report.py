"""Turns a pytest-benchmark JSON file into the Markdown tables of benchmarks/RESULTS.md.

    pytest benchmarks --benchmark-json=bench.json
    python -m benchmarks.report bench.json > tables.md

Within each group the rows are sorted by median time, and every baseline's ratio is reported as
(baseline median / glann_ext median): above 1 means glann_ext is that many times faster.
"""

from __future__ import annotations

import json
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


def render(data: dict) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b.get("group") or b["name"]].append(b)
    out = []
    machine = data.get("machine_info", {})
    out.append(
        f"Machine: {machine.get('cpu', {}).get('brand_raw', '?')}, {machine.get('cpu', {}).get('count', '?')} "
        f"logical CPUs; Python {machine.get('python_version', '?')}; run at {data.get('datetime', '?')}.\n"
    )
    for group in sorted(groups):
        # Ratios are against the group's first glann row in run order (the bench files list the
        # like-for-like glann call first, e.g. out-of-place projection before the in-place one).
        ours = [b for b in groups[group] if _is_ours(_method(b))]
        rows = sorted(groups[group], key=lambda b: b["stats"]["median"])
        ref = ours[0]["stats"]["median"] if ours else None
        extra_keys = sorted({k for b in rows for k in b.get("extra_info", {}) if k != "threads"})
        out.append(f"### {group}\n")
        header = ["method", "median (ms)", "glann_ext speed-up"] + extra_keys
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for b in rows:
            med = b["stats"]["median"]
            ratio = f"{med / ref:.2f}x" if ref else "-"
            if ours and b is ours[0]:
                ratio = "1.00x (ours)"
            extras = [str(b.get("extra_info", {}).get(k, "")) for k in extra_keys]
            out.append("| " + " | ".join([_method(b), f"{med * 1e3:.3f}", ratio] + extras) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        print(render(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
