"""Loads the compiled module ``glann_ext._C``; the only place that imports it is ``glann_ext.ops``."""

from __future__ import annotations

try:
    from . import _C
except ImportError as exc:  # pragma: no cover - only when the package was not built
    raise ImportError(
        "glann_ext's compiled module _C is missing or failed to load. Install the package with "
        "`pip install .` (or run scripts/dev_build.sh for an in-place development build). "
        f"Original error: {exc}"
    ) from exc

__all__ = ["_C"]
