"""Speed benchmarks (pytest-benchmark) and quality reports of glann_ext, run from the checkout.

``python -m benchmarks.quality`` (and every ``python -m benchmarks.*``) puts the checkout first on
``sys.path``, where ``glann_ext/`` has no compiled module unless it was built in place. So when it has none,
the checkout's folder moves to the end of ``sys.path`` before anything imports glann_ext: the installed
package (``pip install .``) is measured, as ``benchmarks/run_all.sh`` does by running from a copy.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _prefer_installed_glann_ext() -> None:
    root = Path(__file__).resolve().parents[1]
    built_in_place = any(p.suffix in (".so", ".pyd") for p in (root / "glann_ext").glob("_C*"))
    if "glann_ext" in sys.modules or built_in_place:
        return

    def is_root(entry: str) -> bool:
        try:
            return Path(entry or ".").resolve() == root
        except OSError:
            return False

    sys.path[:] = [e for e in sys.path if not is_root(e)] + [e for e in sys.path if is_root(e)]


_prefer_installed_glann_ext()
