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


def _method(name: str) -> str:
    # "bench_x[cpu-4096x40960x64-torch_cdist_argmin]" -> "torch_cdist_argmin"
    inner = name[name.find("[") + 1 : name.rfind("]")] if "[" in name else name
    return inner.rsplit("-", 1)[-1]


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
        rows = sorted(groups[group], key=lambda b: b["stats"]["median"])
        ours = [b for b in rows if _method(b["name"]).startswith("glann_ext")]
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
            out.append("| " + " | ".join([_method(b["name"]), f"{med * 1e3:.2f}", ratio] + extras) + " |")
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
