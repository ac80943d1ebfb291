"""Loads the compiled module ``glann_ext._C``; the only place that imports it is ``glann_ext.ops``."""

from __future__ import annotations

from pathlib import Path


def _missing_module_message(exc: ImportError) -> str:
    """Why ``_C`` could not be imported, and what to do: a built module that fails to load, a source checkout
    that shadows the installed package (``python -m`` and ``torchrun -m`` put the current folder first on
    ``sys.path``), or a package that was never built."""
    here = Path(__file__).resolve().parent
    if _has_compiled_module(here):
        return f"glann_ext's compiled module in {here} failed to load: {exc}"
    installed = _installed_elsewhere(here)
    if installed is not None:
        return (
            f"glann_ext was imported from the source checkout {here}, which has no compiled module; the "
            f"installed glann_ext is {installed}. The checkout comes first on sys.path when Python runs in "
            "it (`python -m`, `python -c`, a script there): run from another folder, use the `glann` command (`torchrun --no-python "
            "glann ...`), or build in place (`pip install -e . --no-build-isolation`, or scripts/dev_build.sh)."
        )
    return (
        f"glann_ext's compiled module _C is missing from {here}: the package was not built. Install it with "
        "`pip install .` (or run scripts/dev_build.sh for an in-place development build)."
    )


def _has_compiled_module(folder: Path) -> bool:
    return any(p.suffix in (".so", ".pyd") for p in folder.glob("_C*"))


def _installed_elsewhere(here: Path) -> Path | None:
    """The folder of an installed glann_ext other than ``here`` (None: none is installed, or it is ``here``)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        found = Path(str(distribution("glann_ext").locate_file("glann_ext"))).resolve()
    except (PackageNotFoundError, OSError):
        return None
    return found if found != here and found.is_dir() else None


try:
    from . import _C
except ImportError as exc:  # pragma: no cover - only when the package was not built or is shadowed
    # a missing module's own error blames "a circular import": only a module that fails to load keeps its cause
    cause = exc if _has_compiled_module(Path(__file__).resolve().parent) else None
    raise ImportError(_missing_module_message(exc)) from cause

__all__ = ["_C"]
