"""Checks the built extension: it must not link libtorch (no c10::/at:: symbols), and it reports
what it was built with. Run by scripts/test.sh after installation."""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> int:
    import glann_ext
    from glann_ext._ext import _C

    path = _C.__file__
    info = glann_ext.build_info()
    print(f"glann_ext {info['version']} at {path}")
    print("  " + ", ".join(f"{k}={v}" for k, v in info.items()))
    want_cuda = os.environ.get("GLANN_EXT_CUDA", "AUTO").upper() == "ON"
    if want_cuda and not info["cuda_compiled"]:
        print("error: GLANN_EXT_CUDA=ON but the module was built without CUDA kernels", file=sys.stderr)
        return 1
    nm = subprocess.run(["nm", "-D", "-C", path], capture_output=True, text=True, check=True).stdout
    leaked = [ln for ln in nm.splitlines() if "c10::" in ln or "at::" in ln or "torch::" in ln]
    if leaked:
        print("error: the module references libtorch symbols:\n" + "\n".join(leaked[:10]), file=sys.stderr)
        return 1
    deps = subprocess.run(["ldd", path], check=True, capture_output=True, text=True).stdout
    for lib in ("libtorch", "libc10", "libcudart.so"):
        if lib in deps:
            print(f"error: the module links {lib}:\n{deps}", file=sys.stderr)
            return 1
    print("  no libtorch symbols, no dynamic CUDA runtime: OK")
    package = os.path.dirname(glann_ext.__file__)
    missing = [f for f in ("py.typed", "_C.pyi") if not os.path.exists(os.path.join(package, f))]
    if missing:  # type checkers read the installed package only if these ship with it (PEP 561)
        print(f"error: the installed package lacks {missing}", file=sys.stderr)
        return 1
    print("  typed package (py.typed, _C.pyi): OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
