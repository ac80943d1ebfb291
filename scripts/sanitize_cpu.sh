#!/usr/bin/env bash
# Runs the CPU kernels' tests against a copy of the extension built with AddressSanitizer and
# UndefinedBehaviorSanitizer, once per SIMD copy this CPU runs (GLANN_EXT_CPU_ISA). A read past a
# tensor's end in a vector tail, a signed overflow in an index or a misaligned load is reported and fails
# the run, where the ordinary tests would pass on whatever bytes lay there.
# Usage: [SANITIZE_ISAS=best] bash scripts/sanitize_cpu.sh [pytest args]   (default: the kernel and op test
# files; .ci/run runs the kernel tests on the CPU's best copy)
# Needs the package installed in the active Python (scripts/test.sh or README's test command), g++ with
# libasan and libubsan, cmake and ninja. The module is torch-free, so only it is instrumented; the
# sanitizer runtimes are preloaded into the interpreter, whose own allocations ASan then tracks too
# (torch's CPU tensors come from malloc, so a kernel overrunning a tensor hits a redzone).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/sanitized_build.sh  # sets PY and work

build=$PWD/build/sanitize-cpu
# -O1 -g1 (line tables) for the bindings, half the build time of -O2 -g. `cxx` (g++) is the helper's: the
# runtimes preloaded below must be its own.
sanitized_build "$build" _C \
  "-O1 -g1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined"

# The package as installed, with the sanitized module in place of the installed one.
installed=$(cd / && "$PY" -c "import glann_ext, os; print(os.path.dirname(glann_ext.__file__))")
mkdir -p "$work/pkg"
cp -r "$installed" "$work/pkg/glann_ext"
rm -f "$work/pkg/glann_ext"/_C*.so
cp "$build"/_C*.so "$work/pkg/glann_ext/"

export LD_PRELOAD="$("$cxx" -print-file-name=libasan.so) $("$cxx" -print-file-name=libubsan.so)"
# Leaks: the interpreter's and torch's own at exit are not ours; the kernels allocate nothing.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONPATH="$work/pkg${PYTHONPATH:+:$PYTHONPATH}"
repo=$PWD
cd "$work"  # python -m and - put the current folder first on sys.path: not the checkout, which has no module
# An editable install (scikit-build-core) maps glann_ext._C to its own build ahead of PYTHONPATH; its
# import hook stands aside for the build folders listed in SKBUILD_EDITABLE_SKIP.
export SKBUILD_EDITABLE_SKIP=$("$PY" -c "import sys, os; print(os.pathsep.join(getattr(f, 'path', '') for f in
sys.meta_path if type(f).__module__.startswith('_editable_skbc_')))")
"$PY" - "$work/pkg" <<'EOF'
import sys, glann_ext
from glann_ext._ext import _C
assert glann_ext.__file__.startswith(sys.argv[1]) and _C.__file__.startswith(sys.argv[1]), _C.__file__
print(f"sanitized module: {_C.__file__}")
EOF

# The sanitizer is live: a raw call told one row more than the tensors hold must be stopped by ASan.
# (exit status 1 rather than abort for this one, so the shell does not print the abort)
if ASAN_OPTIONS=$ASAN_OPTIONS:abort_on_error=0 "$PY" - >"$work/canary.log" 2>&1 <<'EOF'
import torch
from glann_ext.ops import _native
from glann_ext._ext import _C
src, dst = torch.randn(7, 5), torch.empty(7, 5)
_C.project_to_sphere(_native.dtype_code(src), src.data_ptr(), src.stride(), dst.data_ptr(), dst.stride(), 8, 5, 0,
                     _native.exec_context(src))
EOF
then
  echo "error: an out-of-bounds read went unreported: the sanitizer is not active" >&2; exit 1
fi
grep -q "heap-buffer-overflow" "$work/canary.log" || { cat "$work/canary.log" >&2; exit 1; }
echo "canary: ASan reports a read one row past a tensor"

tests=()
for arg in "$@"; do  # test paths as given from the repository root
  if [ -e "$repo/${arg%%::*}" ]; then tests+=("$repo/$arg"); else tests+=("$arg"); fi
done
[ ${#tests[@]} -gt 0 ] || tests=("$repo"/tests/test_{nn_argmin,laplacian,sphere,native,inputs,threads}.py)
# Every SIMD copy up to the best this CPU runs (a non-x86 build has only the baseline); SANITIZE_ISAS=best
# (CI) runs the best alone, SANITIZE_ISAS="baseline avx2" those named.
isas=$("$PY" -c "import glann_ext; o = ['baseline', 'avx2', 'avx512']
best = glann_ext.build_info()['cpu_isa']; print(*o[: o.index(best) + 1])")
case "${SANITIZE_ISAS:-}" in
  "") ;;
  best) isas=${isas##* } ;;
  *) isas=$SANITIZE_ISAS ;;
esac
for isa in $isas; do
  echo "== GLANN_EXT_CPU_ISA=$isa"
  GLANN_EXT_CPU_ISA=$isa "$PY" -m pytest -q -p no:cacheprovider -x "${tests[@]}"
done
echo "CPU kernels under ASan + UBSan ($isas): OK"
