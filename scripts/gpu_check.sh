#!/usr/bin/env bash
# The prepared run for a lent GPU (issue 15): one command of about 8 minutes, every stage under its own time
# budget, its results written under $OUT as it goes. On the device machine (device tool, timeout_s=600):
#   OUT=$OUT bash scripts/gpu_check.sh                       # every stage
#   OUT=$OUT bash scripts/gpu_check.sh --only tests,bench    # rerun stages (build added if glann_ext lacks CUDA)
#   bash scripts/gpu_check.sh --dry                          # CPU machine: GPU stages skip (automatic without
#                                                            # nvidia-smi or a GPU torch can see)
#   bash scripts/gpu_check.sh --list                         # stages and budgets
# Stages and budgets in seconds (GLANN_GPU_BUDGET_<STAGE>=N overrides one; all are also cut to what is left of
# GLANN_GPU_TOTAL=570, so the command ends inside the device's 600 s):
#   preflight 15, build 70, tests 60, hopper 45, memcheck 55, racecheck 60, bench 200, compile 45   (sum 550)
# (the H200 run of 2026-12-04 took 10, 54, 36, 15, 22, 23, 156 and 31 s; the sanitizers' test sets have grown
# since: both searches pinned, the legacy one in float64 too, the fused Laplacian's edge tiles, racecheck on every dtype
# but bf16)
# The tests stage runs every CUDA test on the legacy kernels (GLANN_EXT_CUDA_KERNELS=legacy: what GPUs before
# Hopper run), the hopper stage the CUDA suites of the three ops and of training on the Hopper kernels of
# issue 15 (GLANN_EXT_CUDA_KERNELS=hopper); tests/test_cuda_hopper.py (tests stage) compares both variants
# in one process; memcheck and racecheck run the default (hopper:nn_argmin,project on sm_90) and include its
# small Hopper tests; the bench has glann_ext_hopper rows.
# Files under $OUT (the device returns at most 8): summary.md (rewritten after every stage), logs.tar.gz (every
# log, rewritten after every stage), bench.json (the merged pytest-benchmark data) and bench.md (tables, rates,
# and the issue's targets met or missed). stdout: one "== gpu_check <stage>: STATUS" line per stage, the tail of
# a failing stage's log, the summary table last (the device returns the last 12,000 characters of stdout).
# Every pytest stage imports the INSTALLED glann_ext: pytest runs in a scratch folder outside the repository
# (benchmarks/ is copied there: as a package, pytest would put the repository root first on sys.path) with a
# plugin that prints glann_ext.__file__ and stops the session if it is the source tree's glann_ext/.
# Extra knobs: GLANN_GPU_TESTS_ARGS (appended to the CUDA test stage's pytest), GLANN_GPU_SANITIZER_FILTER
# (compute-sanitizer kernel filter, default kns=glann), PYTHON (interpreter; default python3, else python).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAGES=(preflight build tests hopper memcheck racecheck bench compile)
declare -A BUDGET=([preflight]=15 [build]=70 [tests]=60 [hopper]=45 [memcheck]=55 [racecheck]=60 [bench]=200 [compile]=45)
declare -A WHAT=(
  [preflight]="python3 and headers, nvcc vs driver, compute-sanitizer, torch, GPU"
  [build]="pip install --no-build-isolation for the local arch; the installed module checked"
  [tests]="GLANN_EXT_CUDA_KERNELS=legacy pytest -m cuda (all CUDA tests but the torch.compile ones; hopper vs legacy in test_cuda_hopper.py)"
  [hopper]="GLANN_EXT_CUDA_KERNELS=hopper pytest -m cuda on the nn_argmin, Laplacian, projection and training suites"
  [memcheck]="compute-sanitizer memcheck on -k small of test_cuda_sizes.py and test_cuda_hopper.py, caching allocator off"
  [racecheck]="compute-sanitizer racecheck on the shared-memory kernels (nn_argmin, Laplacian; legacy and hopper)"
  [bench]="benchmarks -k cuda: nn_argmin, Laplacian, sphere (legacy and hopper rows), then torch.compile baseline"
  [compile]="pytest -m cuda -k compile (torch.compile of the ops)"
)
TOTAL_CAP=${GLANN_GPU_TOTAL:-570}
DRY=${GLANN_GPU_CHECK_DRY:-0}
ONLY=""

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --only) [ $# -ge 2 ] || { echo "gpu_check: --only needs STAGE[,STAGE...]" >&2; exit 2; }; ONLY=$2; shift 2 ;;
    --only=*) ONLY=${1#--only=}; shift ;;
    --dry) DRY=1; shift ;;
    --list)
      for s in "${STAGES[@]}"; do printf '%-10s %4ss  %s\n' "$s" "${BUDGET[$s]}" "${WHAT[$s]}"; done
      exit 0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for s in "${STAGES[@]}"; do
  var="GLANN_GPU_BUDGET_${s^^}"
  if [ -n "${!var:-}" ]; then BUDGET[$s]=${!var}; fi
done
if [ -n "$ONLY" ]; then
  for s in ${ONLY//,/ }; do
    [ -n "${BUDGET[$s]:-}" ] || { echo "gpu_check: unknown stage '$s' (stages: ${STAGES[*]})" >&2; exit 2; }
  done
fi

OUT=${OUT:-${TMPDIR:-/tmp}/glann-gpu-check}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
rm -f "$OUT/summary.md" "$OUT/logs.tar.gz" "$OUT/bench.json" "$OUT/bench.md"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
LOGS=$WORK/logs
RUN=$WORK/run      # pytest's folder for tests/: outside the repository, so `import glann_ext` is the installed one
BENCH=$WORK/bench  # a copy of benchmarks/ (and the pytest settings) run from here
mkdir -p "$LOGS" "$RUN" "$BENCH/benchmarks" "$WORK/plugin"
cp "$REPO"/benchmarks/*.py "$BENCH/benchmarks/"
cp "$REPO/pyproject.toml" "$BENCH/"
export PYTHONPATH=$WORK/plugin  # only the plugin below
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 GLANN_GPU_CHECK_REPO=$REPO
cat > "$WORK/plugin/gpu_check_where.py" <<'EOF'
"""pytest plugin of scripts/gpu_check.sh: the session must test the installed glann_ext."""
import os

import pytest

import glann_ext

WHERE = os.path.dirname(os.path.realpath(glann_ext.__file__))
SOURCE = os.path.realpath(os.path.join(os.environ["GLANN_GPU_CHECK_REPO"], "glann_ext"))


def pytest_sessionstart(session):
    # Through the terminal reporter: -q hides report headers, and this line is the proof the logs keep.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"glann_ext under test: {WHERE} {glann_ext.build_info()}")
    if WHERE == SOURCE:
        pytest.exit(f"glann_ext was imported from the source tree ({WHERE}), not the installed package", 3)
EOF

declare -A STATUS SECS DETAIL
NOTES=()
PY=""; GPU_CC=""; ARCH=""; SANITIZER=""; NVCC_TOO_NEW=0; GPU_LINE="none"; WHY_DRY=""

note() { NOTES+=("$1"); echo "   note: $1"; }

# ---- bookkeeping ---------------------------------------------------------------------------------------

write_summary() {
  local s
  {
    echo "# gpu_check summary"
    echo
    echo "- started $START_DATE on $(hostname); repository $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "- mode: $([ "$DRY" = 1 ] && echo "dry (GPU stages skipped: $WHY_DRY)" || echo "GPU")${ONLY:+; --only $ONLY}"
    echo "- GPU: $GPU_LINE"
    [ -f "$LOGS/glann_ext.txt" ] && echo "- glann_ext under test: $(tr '\n' ' ' < "$LOGS/glann_ext.txt")"
    echo
    echo "| stage | status | seconds | budget | detail |"
    echo "|---|---|---|---|---|"
    for s in "${STAGES[@]}"; do
      echo "| $s | ${STATUS[$s]:-not run} | ${SECS[$s]:--} | ${BUDGET[$s]} | ${DETAIL[$s]:-${WHAT[$s]}} |"
    done
    if [ ${#NOTES[@]} -gt 0 ]; then
      echo; echo "## Notes"; echo
      printf -- '- %s\n' "${NOTES[@]}"
    fi
    if [ -s "$LOGS/ptxas.md" ]; then echo; echo "## Kernel resources (ptxas -v, local arch)"; echo; cat "$LOGS/ptxas.md"; fi
    if [ -s "$LOGS/sass.md" ]; then echo; echo "## Hopper kernels' SASS (instruction counts)"; echo; cat "$LOGS/sass.md"; fi
    if [ -s "$OUT/bench.md" ] && grep -q '^## Targets' "$OUT/bench.md"; then
      echo; sed -n '/^## Targets/,$p' "$OUT/bench.md"
    fi
    for s in "${STAGES[@]}"; do
      case ${STATUS[$s]:-} in FAIL|TIMEOUT)
        echo; echo "## $s: last lines of its log"; echo; echo '```'
        tail -n 40 "$LOGS/$s.log" 2>/dev/null; echo '```' ;;
      esac
    done
  } > "$OUT/summary.md"
  tar -C "$WORK" -czf "$OUT/logs.tar.gz" logs 2>/dev/null
}

# Status from a pytest exit code and its log: PASS (something passed), SKIPPED (nothing ran), TIMEOUT, FAIL.
pytest_verdict() {
  local stage=$1 rc=$2 log=$3 counts
  counts=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|deselected|error|errors|xfailed|xpassed)' "$log" \
    | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
  DETAIL[$stage]="${counts:-no pytest summary line}"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then STATUS[$stage]=TIMEOUT
  elif [ "$rc" -eq 0 ] && grep -q ' passed' <<< "$counts"; then STATUS[$stage]=PASS
  elif [ "$rc" -eq 0 ] || { [ "$rc" -eq 5 ] && [ "$DRY" = 1 ]; }; then STATUS[$stage]=SKIPPED
  else STATUS[$stage]=FAIL; DETAIL[$stage]="exit $rc: ${DETAIL[$stage]}"
  fi
}

# pytest from a scratch folder, under `timeout`: run_pytest DIR BUDGET LOG [--prefix command --] pytest-args...
run_pytest() {
  local dir=$1 budget=$2 log=$3; shift 3
  local prefix=()
  if [ "${1:-}" = "--prefix" ]; then
    shift
    while [ "$1" != "--" ]; do prefix+=("$1"); shift; done
    shift
  fi
  (cd "$dir" && timeout -k 10 "$budget" "${prefix[@]}" "$PY" -m pytest -p no:cacheprovider -p gpu_check_where "$@") \
    > "$log" 2>&1
}

run_stage() {
  local s=$1 budget=${BUDGET[$1]} left t0
  left=$((TOTAL_CAP - SECONDS - 5))
  if [ "$budget" -gt "$left" ]; then budget=$left; fi
  if [ "$budget" -lt 10 ]; then
    STATUS[$s]=SKIPPED; DETAIL[$s]="no time left of the ${TOTAL_CAP}s cap"
  else
    t0=$SECONDS
    "stage_$s" "$budget"
    SECS[$s]=$((SECONDS - t0))
  fi
  echo "== gpu_check $s: ${STATUS[$s]} (${SECS[$s]:-0}s of ${budget}s) ${DETAIL[$s]:-}"
  case ${STATUS[$s]} in FAIL|TIMEOUT) tail -n 25 "$LOGS/$s.log" 2>/dev/null | cut -c1-300 | sed 's/^/   | /' ;; esac
  write_summary
}

gpu_stage_skipped() {  # the GPU stages in dry mode
  STATUS[$1]=SKIPPED; DETAIL[$1]="dry run: $WHY_DRY"
}

# ---- stages ----------------------------------------------------------------------------------------------

stage_preflight() {
  local log=$LOGS/preflight.log budget=$1 nvcc_v="" drv_v=""
  {
    echo "## date, host, CPUs, memory"; date -u; uname -a; nproc; free -g 2>/dev/null | head -2
    for cand in "${PYTHON:-}" python3 python; do
      if [ -n "$cand" ] && command -v "$cand" > /dev/null; then PY=$(command -v "$cand"); break; fi
    done
    echo "## python: ${PY:-none found}"
  } > "$log" 2>&1
  if [ -z "$PY" ]; then STATUS[preflight]=FAIL; DETAIL[preflight]="no python3 or python on PATH"; return; fi
  timeout "$budget" "$PY" - > "$WORK/pre.env" 2>> "$log" <<'EOF'
import importlib.util, os, shlex, sys, sysconfig
out = {"PY_VERSION": sys.version.split()[0]}
inc = sysconfig.get_paths().get("include", "")
out["PY_HEADERS"] = inc if os.path.exists(os.path.join(inc, "Python.h")) else ""
missing = [m for m in ("torch", "pybind11", "scikit_build_core", "pytest", "pytest_benchmark", "hypothesis", "numpy")
           if importlib.util.find_spec(m) is None]
out["PY_MISSING"] = " ".join(missing)
if "torch" not in missing:
    import torch
    out["TORCH"] = f"{torch.__version__} (CUDA {torch.version.cuda})"
    out["TORCH_GPU"] = "1" if torch.cuda.is_available() else "0"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["GPU_CC"] = f"{p.major}{p.minor}"
        out["GPU_LINE"] = (f"{p.name}, compute capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
                           f"{p.total_memory / 2**30:.0f} GiB, L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB")
for k, v in out.items():
    print(f"{k}={shlex.quote(str(v))}")
EOF
  local PY_VERSION="" PY_HEADERS="" PY_MISSING="" TORCH="" TORCH_GPU=0
  # shellcheck disable=SC1091
  . "$WORK/pre.env"
  cat "$WORK/pre.env" >> "$log"
  if ! command -v nvcc > /dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
  if command -v nvcc > /dev/null; then
    nvcc_v=$(nvcc --version | sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p')
    { echo "## nvcc"; nvcc --version; } >> "$log" 2>&1
  fi
  for cand in compute-sanitizer /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    if command -v "$cand" > /dev/null; then SANITIZER=$(command -v "$cand"); break; fi
  done
  if command -v nvidia-smi > /dev/null; then
    { echo "## nvidia-smi"; timeout 10 nvidia-smi
      timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu --format=csv
    } >> "$log" 2>&1
    drv_v=$(timeout 10 nvidia-smi 2> /dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p' | head -n 1)
  fi
  [ -n "$SANITIZER" ] && { echo "## compute-sanitizer"; "$SANITIZER" --version; } >> "$log" 2>&1

  if [ "$DRY" = 1 ]; then WHY_DRY="asked for (--dry or GLANN_GPU_CHECK_DRY=1)"
  elif ! command -v nvidia-smi > /dev/null; then DRY=1; WHY_DRY="no nvidia-smi"
  elif [ "$TORCH_GPU" != 1 ]; then DRY=1; WHY_DRY="torch.cuda.is_available() is False"
  fi
  # GPU_CC, never CC: an exported CC is the C compiler of Triton's (torch.compile's) helper builds.
  GPU_CC=${GPU_CC:-90}  # dry runs build for Hopper
  ARCH=$GPU_CC
  local detail="python $PY_VERSION; torch ${TORCH:-missing}; nvcc ${nvcc_v:-missing}; driver CUDA ${drv_v:-?}"
  detail+="; compute-sanitizer ${SANITIZER:+found}${SANITIZER:-missing}; ${GPU_LINE}"
  STATUS[preflight]=PASS
  [ -n "$PY_HEADERS" ] || { STATUS[preflight]=WARN; note "no Python.h for $PY: the build will fail (install the python3-dev package)"; }
  [ -z "$PY_MISSING" ] || { STATUS[preflight]=WARN; note "missing Python modules: $PY_MISSING (nothing can be fetched on the device: carry wheels)"; }
  [ -n "$nvcc_v" ] || { STATUS[preflight]=WARN; note "no nvcc: the build will be CPU-only, the CUDA stages fail or skip"; }
  if [ -n "$nvcc_v" ] && [ -n "$drv_v" ]; then
    local nmaj=${nvcc_v%%.*} nmin dmaj=${drv_v%%.*} dmin
    nmin=${nvcc_v#*.}; nmin=${nmin%%.*}; dmin=${drv_v#*.}; dmin=${dmin%%.*}
    if [ "$nmaj" -gt "$dmaj" ]; then
      NVCC_TOO_NEW=1; STATUS[preflight]=WARN
      note "nvcc $nvcc_v is a newer major than the driver's CUDA $drv_v: its runtime cannot start on this driver; the build is skipped (GLANN_GPU_CHECK_FORCE_BUILD=1 tries anyway)"
    elif [ "$nmaj" -eq "$dmaj" ] && [ "$nmin" -gt "$dmin" ]; then
      ARCH="${GPU_CC}-real"
      note "nvcc $nvcc_v is newer than the driver's CUDA $drv_v: building SASS only (${ARCH}); the driver could not JIT this nvcc's PTX, minor-version compatibility runs the SASS"
    fi
  fi
  [ -n "$SANITIZER" ] || note "compute-sanitizer not found: memcheck and racecheck skip"
  DETAIL[preflight]=$detail
}

stage_build() {
  local budget=$1 log=$LOGS/build.log cuda=ON rc
  if [ "$NVCC_TOO_NEW" = 1 ] && [ "${GLANN_GPU_CHECK_FORCE_BUILD:-0}" != 1 ]; then
    STATUS[build]=FAIL; DETAIL[build]="nvcc newer than the driver (see notes)"; return
  fi
  command -v nvcc > /dev/null || cuda=OFF
  echo "GLANN_EXT_CUDA=$cuda CMAKE_CUDA_ARCHITECTURES=$ARCH" > "$log"
  (cd "$REPO" && CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) GLANN_EXT_CUDA=$cuda timeout -k 10 "$budget" \
    "$PY" -m pip install -v --no-build-isolation --no-deps . \
    -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" -Ccmake.define.CMAKE_CUDA_FLAGS=--ptxas-options=-v) >> "$log" 2>&1
  rc=$?
  if [ "$rc" -ne 0 ]; then
    STATUS[build]=$([ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo TIMEOUT || echo FAIL)
    DETAIL[build]="pip install exit $rc (build.log)"; return
  fi
  ptxas_table "$log" > "$LOGS/ptxas.md"
  sass_table > "$LOGS/sass.md" 2>> "$log"
  local spilled
  spilled=$(unexpected_spills "$LOGS/ptxas.md")
  if ! (cd "$RUN" && "$PY" -c 'import glann_ext; print(glann_ext.__file__); print(glann_ext.build_info())') \
      > "$LOGS/glann_ext.txt" 2>> "$log"; then
    STATUS[build]=FAIL; DETAIL[build]="the installed glann_ext does not import (build.log)"; return
  fi
  STATUS[build]=PASS; DETAIL[build]="$(head -n 1 "$LOGS/glann_ext.txt"); CUDA $cuda, arch $ARCH"
  if [ "$DRY" != 1 ] && ! grep -q "'cuda_available': True" "$LOGS/glann_ext.txt"; then
    STATUS[build]=FAIL; DETAIL[build]="built, but glann_ext.cuda_available() is False: $(tail -n 1 "$LOGS/glann_ext.txt")"
  elif ! (cd "$RUN" && GLANN_EXT_CUDA=$cuda "$PY" "$REPO/scripts/check_extension.py") >> "$log" 2>&1; then
    # CI checks the module's boundary on every run; here a failure (or no nm/ldd) is worth a note, not a stop.
    STATUS[build]=WARN; note "scripts/check_extension.py failed on the installed module (build.log)"
  fi
  if [ -n "$spilled" ]; then
    [ "${STATUS[build]}" = PASS ] && STATUS[build]=WARN
    note "register spills not in docs/GPU_KERNELS.md (ptxas.md): $spilled"
  fi
}

# Kernels of a ptxas table that spill registers, but for the one docs/GPU_KERNELS.md lists (the float64
# legacy search: its 8x8 double accumulators alone take 128 registers).
unexpected_spills() {
  awk -F'|' 'NR > 2 && $6 !~ /^ *(0\/0)? *$/ && $2 !~ /argmin_tile_kernel<double>/ {
               gsub(/^ *`|` *$/, "", $2); printf "%s%s", sep, $2; sep = ", " }' "$1"
}

# The Hopper kernels' SASS, counted (cuobjdump on the installed module): tensor-core HMMA, ldmatrix LDSM,
# cp.async LDGSTS, local-memory LDL/STL (expected 0) per kernel.
sass_table() {
  local so
  command -v cuobjdump > /dev/null || return 0
  so=$(cd "$RUN" && "$PY" -c 'import glann_ext._C as c; print(c.__file__)') || return 0
  cuobjdump -sass "$so" | { if command -v c++filt > /dev/null; then c++filt; else cat; fi; } | awk '
    BEGIN { re = "(mma_argmin|plane_(forward|backward)|tile_(forward|up_adjoint|down_adjoint)|project_vec)_kernel" }
    /Function :/ { sub(/.*Function : /, ""); gsub(/\(anonymous namespace\)::/, ""); sub(/\(.*/, ""); sub(/^void /, "")
                   sub(/^glann::/, ""); k = ($0 ~ re) ? $0 : ""; if (k != "") seen[k] = 1; next }
    k != "" && /HMMA/ { n[k, "h"]++ }  k != "" && /LDSM/ { n[k, "l"]++ }
    k != "" && /LDGSTS/ { n[k, "g"]++ }  k != "" && /(LDL|STL)/ { n[k, "s"]++ }
    END { if (length(seen)) print "| kernel | HMMA | LDSM | LDGSTS | LDL+STL |\n|---|---|---|---|---|"
          for (k in seen) printf "| `%s` | %d | %d | %d | %d |\n", k, n[k, "h"], n[k, "l"], n[k, "g"], n[k, "s"] }'
}

# ptxas -v lines of the build log as a table: kernel, registers, spills, stack, shared memory.
ptxas_table() {
  "$PY" - "$1" <<'EOF'
import re, shutil, subprocess, sys
rows, fn = [], None
for line in open(sys.argv[1], errors="replace"):
    m = re.search(r"Compiling entry function '(\w+)' for '(\w+)'", line)
    if m:
        fn = [m.group(1), m.group(2), "", "", "", ""]
        continue
    if fn is None:
        continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m:
        fn[3], fn[4] = m.group(1), f"{m.group(2)}/{m.group(3)}"
    m = re.search(r"Used (\d+) registers", line)
    if m:
        smem = re.search(r"(\d+) bytes smem", line)
        fn[2], fn[5] = m.group(1), smem.group(1) if smem else "0"
        rows.append(fn)
        fn = None
if rows:
    names = [r[0] for r in rows]
    if shutil.which("c++filt"):
        names = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
    print("| kernel | arch | registers | stack (B) | spill st/ld (B) | smem (B) |\n|---|---|---|---|---|---|")
    for name, r in zip(names, rows):
        name = name.replace("(anonymous namespace)::", "").removeprefix("void ").split("(")[0]
        print(f"| `{name}` | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} |")
EOF
}

stage_tests() {
  [ "$DRY" = 1 ] && note "tests in dry mode: collected and skipped by the cuda marker (proves they import)"
  # shellcheck disable=SC2086  # GLANN_GPU_TESTS_ARGS holds extra pytest words on purpose
  # On the legacy kernels: what every GPU before Hopper runs (the default picks the Hopper search and
  # projection on sm_90); the hopper stage runs the suites again on the Hopper kernels.
  run_pytest "$RUN" "$1" "$LOGS/tests.log" --prefix env GLANN_EXT_CUDA_KERNELS=legacy -- \
    "$REPO/tests" -m cuda -k "not compile" -q -rfExX --durations=15 \
    --junitxml="$LOGS/tests.xml" ${GLANN_GPU_TESTS_ARGS:-}
  pytest_verdict tests $? "$LOGS/tests.log"
}

stage_hopper() {  # the existing suites of the three ops, every kernel call on the Hopper kernels
  [ "$DRY" = 1 ] && note "hopper in dry mode: collected and skipped by the cuda marker"
  local t=$REPO/tests
  run_pytest "$RUN" "$1" "$LOGS/hopper.log" --prefix env GLANN_EXT_CUDA_KERNELS=hopper -- \
    "$t/test_cuda_sizes.py" "$t/test_cuda_streams.py" "$t/test_nn_argmin.py" "$t/test_laplacian.py" "$t/test_sphere.py" \
    "$t/test_train.py" \
    -m cuda -k "not compile and not latent and not fused_steps" -q -rfExX --durations=10 --junitxml="$LOGS/hopper.xml"
  pytest_verdict hopper $? "$LOGS/hopper.log"
}

sanitize() {  # sanitize STAGE BUDGET TOOL pytest-args...
  local stage=$1 budget=$2 tool=$3 rc summary; shift 3
  if [ "$DRY" = 1 ]; then gpu_stage_skipped "$stage"; return; fi
  if [ -z "$SANITIZER" ]; then STATUS[$stage]=SKIPPED; DETAIL[$stage]="compute-sanitizer not found"; return; fi
  local filter=()
  [ -n "${GLANN_GPU_SANITIZER_FILTER-kns=glann}" ] && filter=(--kernel-name "${GLANN_GPU_SANITIZER_FILTER-kns=glann}")
  # The caching allocator off: every tensor is its own cudaMalloc, so an access past its end is seen.
  run_pytest "$RUN" "$budget" "$LOGS/$stage.log" --prefix env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$tool" \
    --report-api-errors no --error-exitcode 9 --print-limit 30 "${filter[@]}" -- "$REPO/tests/test_cuda_sizes.py" \
    "$REPO/tests/test_cuda_hopper.py" -q "$@"
  rc=$?
  pytest_verdict "$stage" "$rc" "$LOGS/$stage.log"
  summary=$(grep -E '(ERROR|RACECHECK) SUMMARY' "$LOGS/$stage.log" | tail -n 1 | sed 's/^=* *//')
  DETAIL[$stage]="${summary:-no sanitizer summary}; ${DETAIL[$stage]}"
  [ "$rc" -eq 9 ] && STATUS[$stage]=FAIL
}

stage_memcheck() { sanitize memcheck "$1" memcheck -k small; }
stage_racecheck() { sanitize racecheck "$1" racecheck -k "small and (nn_argmin or laplacian) and not bf16"; }

stage_bench() {
  local budget=$1 part file k dryk share b rc total=0 failed=() t0=$SECONDS shares=100
  rm -f "$WORK"/bench-*.json
  : > "$LOGS/bench.log"
  # One pytest per part, so that a part cut short by its budget loses only its own rows (pytest-benchmark
  # writes its JSON at the end). Each part gets its share of what is left, so time saved flows to the next.
  # part|file|-k expression (GPU)|-k expression (dry run: a few small CPU rows)|share of the budget in %
  local parts=(
    "nn_argmin|bench_nn_argmin.py|cuda and not 100000x100000|cpu and 4096x40960x64 and glann_ext|15"
    "nn_argmin_100k|bench_nn_argmin.py|cuda and 100000x100000|cpu and 100000x100000|20"
    "laplacian|bench_laplacian.py|cuda and not torch_compile and not per_sample|cpu and 64x1x28x28 and (glann_ext or eager_slices) and not per_sample|35"
    "sphere|bench_sphere.py|cuda|cpu and batch128 and (glann_adam or torch_sparse_adam_reference)|15"
    "laplacian_compile|bench_laplacian.py|cuda and torch_compile|cpu and torch_compile|15"
  )
  for spec in "${parts[@]}"; do
    IFS='|' read -r part file k dryk share <<< "$spec"
    [ "$DRY" = 1 ] && k=$dryk
    b=$(((budget - (SECONDS - t0)) * share / shares))
    shares=$((shares - share))
    if [ "$b" -lt 5 ]; then failed+=("$part (no time left)"); continue; fi
    echo "== $part: -k '$k' (${b}s)" >> "$LOGS/bench.log"
    run_pytest "$BENCH" "$b" "$LOGS/bench-$part.log" "benchmarks/$file" -k "$k" -q --benchmark-json="$WORK/bench-$part.json" \
      --benchmark-group-by=group --benchmark-columns=median,rounds
    rc=$?
    tail -n 3 "$LOGS/bench-$part.log" >> "$LOGS/bench.log"
    case $rc in
      0) ;;
      5) echo "   (none selected)" >> "$LOGS/bench.log" ;;
      124|137) failed+=("$part (timeout)") ;;
      *) failed+=("$part (exit $rc)") ;;
    esac
    if compgen -G "$WORK/bench-*.json" > /dev/null; then
      (cd "$BENCH" && "$PY" -m benchmarks.report "$WORK"/bench-*.json --targets --merged "$OUT/bench.json") \
        > "$OUT/bench.md" 2>> "$LOGS/bench.log"
      total=$("$PY" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["benchmarks"]))' "$OUT/bench.json")
    fi
    write_summary
  done
  grep -h 'glann_ext under test' "$LOGS"/bench-*.log | head -n 1 >> "$LOGS/bench.log"
  if [ ${#failed[@]} -gt 0 ]; then STATUS[bench]=FAIL; DETAIL[bench]="failed: ${failed[*]}; $total rows in bench.md"
  elif [ "$total" -eq 0 ]; then STATUS[bench]=SKIPPED; DETAIL[bench]="no benchmark selected"
  else STATUS[bench]=PASS; DETAIL[bench]="$total rows in bench.md"
  fi
  [ "$DRY" = 1 ] && DETAIL[bench]+=" (dry: a few CPU rows)"
}

stage_compile() {
  run_pytest "$RUN" "$1" "$LOGS/compile.log" "$REPO/tests" -m cuda -k compile -q -rfExX --durations=10
  pytest_verdict compile $? "$LOGS/compile.log"
}

# ---- main ------------------------------------------------------------------------------------------------

START_DATE=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
echo "== gpu_check: repository $REPO, output $OUT, cap ${TOTAL_CAP}s"
selected() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
installed() { (cd "$RUN" && "$PY" -c "import glann_ext, sys; print(glann_ext.__file__); print(glann_ext.build_info()); $1"); }

run_stage preflight
if [ -n "$ONLY" ] && ! selected build && [ -n "$PY" ]; then
  if [ "$DRY" != 1 ] && ! installed 'sys.exit(not glann_ext.cuda_available())' > "$LOGS/glann_ext.txt" 2>&1; then
    note "--only $ONLY: the installed glann_ext has no usable CUDA kernels, so the build runs too"
    ONLY="build,$ONLY"
  fi
fi
for s in "${STAGES[@]:1}"; do
  selected "$s" || continue
  if [ -z "$PY" ] || { [ "$s" != build ] && [[ ${STATUS[build]:-} == @(FAIL|TIMEOUT) ]]; }; then
    STATUS[$s]=SKIPPED; DETAIL[$s]="$([ -z "$PY" ] && echo 'no python' || echo "the build did not finish (${STATUS[build]})")"
    echo "== gpu_check $s: SKIPPED (${DETAIL[$s]})"; continue
  fi
  run_stage "$s"
done

failed=()
for s in "${STAGES[@]}"; do case ${STATUS[$s]:-} in FAIL|TIMEOUT) failed+=("$s") ;; esac; done
[ ${#failed[@]} -gt 0 ] && note "rerun what failed: OUT=\$OUT bash scripts/gpu_check.sh --only $(IFS=,; echo "${failed[*]}")"
write_summary
nfiles=$(find "$OUT" -type f | wc -l)
echo
echo "== gpu_check done in ${SECONDS}s; $nfiles files under $OUT: $(find "$OUT" -type f -printf '%f ')"
[ "$nfiles" -le 8 ] || echo "== gpu_check WARNING: more than 8 files under $OUT: the device returns 8"
sed -n '/^| stage/,/^$/p' "$OUT/summary.md"
[ ${#NOTES[@]} -gt 0 ] && printf -- '- %s\n' "${NOTES[@]}"
rm -rf "$WORK"
[ ${#failed[@]} -eq 0 ]
