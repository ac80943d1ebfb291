#!/usr/bin/env bash
# Runs the CPU kernels and their thread pool under ThreadSanitizer, once per SIMD copy this CPU runs
# (GLANN_EXT_CPU_ISA): tests/cpp/cpu_threads.cpp, built against the framework-free kernel library
# (csrc/) with -fsanitize=thread, calls every launcher at several thread counts, from concurrent callers
# and from inside a pool task, and checks each result against the one-thread result bit for bit. A data
# race in the pool, or two tasks sharing a slot of a kernel's workspace, is reported and fails the run.
# No Python is involved: torch's uninstrumented OpenMP runtime would bury TSan in false reports.
# Usage: [TSAN_ISAS=best|"baseline avx2"] bash scripts/tsan_cpu.sh
# Needs g++ with libtsan, cmake and ninja; CMake also wants Python with pybind11 (the project's own
# configure step), though nothing here builds or imports the module.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/sanitized_build.sh  # sets PY and work

build=$PWD/build/tsan-cpu
sanitized_build "$build" cpu_threads "-O1 -g1 -fsanitize=thread" -DGLANN_EXT_NATIVE_TESTS=ON \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread"
exe=$build/cpu_threads

# exitcode: TSan's own status after a report, told apart from the harness's FAIL (1) below.
export TSAN_OPTIONS=halt_on_error=1:exitcode=66:second_deadlock_stack=1

# The sanitizer is live: a deliberate race must be reported.
if "$exe" race >"$work/canary.log" 2>&1; then
  echo "error: a deliberate data race went unreported: ThreadSanitizer is not active" >&2; exit 1
fi
grep -q "data race" "$work/canary.log" || { cat "$work/canary.log" >&2; exit 1; }
echo "canary: ThreadSanitizer reports a data race"

# The harness on SIMD copy $1 ('': no cap). Its output is captured to read the copy it took, so a failing
# run's FAIL lines are printed here, not lost with the capture.
run_copy() {
  local out
  out=$(GLANN_EXT_CPU_ISA=$1 "$exe") || {
    printf '%s\n' "$out" >&2
    echo "error: cpu_threads failed (GLANN_EXT_CPU_ISA=$1)" >&2
    return 1
  }
  printf '%s\n' "$out"
}

# Every SIMD copy up to the best this CPU runs (the harness prints the copy each family took); the run
# without a cap is the best copy's.
best_out=$(run_copy "")
best=$(sed -n 's/^OK cpu-threads nn_argmin=\([a-z0-9]*\) .*/\1/p' <<<"$best_out")
all="baseline avx2 avx512"
isas="${all%%"$best"*}$best"
case "${TSAN_ISAS:-}" in
  "") ;;
  best) isas=$best ;;
  *) isas=$TSAN_ISAS ;;
esac
for isa in $isas; do
  if [ "$isa" = "$best" ]; then out=$best_out; else out=$(run_copy "$isa"); fi
  echo "GLANN_EXT_CPU_ISA=$isa: $out"
  [[ $out == *"nn_argmin=$isa laplacian=$isa"* ]] || { echo "error: not the $isa copy" >&2; exit 1; }
done
echo "CPU kernels and thread pool under ThreadSanitizer ($isas): OK"
