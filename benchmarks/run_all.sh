#!/usr/bin/env bash
# Runs every benchmark side by side and writes the tables to benchmarks/results-<host>.md
# (copy the figures into RESULTS.md with the machine and the command). Usage:
#   bash benchmarks/run_all.sh [pytest -k expression]      e.g. cpu, cuda, "cuda and nn_argmin"
# pytest runs on a copy of benchmarks/ outside the source tree: benchmarks/ is a package, so pytest would
# put the repository root first on sys.path and import the source glann_ext, which has no compiled _C
# unless scripts/dev_build.sh built it in place. PYTHONPATH is made absolute first, so `PYTHONPATH=.` still
# measures an in-place build. The pytest header and the JSON's machine_info name the glann_ext measured.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
out=${OUT:-benchmarks/results-$(hostname).json}
case $out in /*) ;; *) out=$repo/$out ;; esac
if [ -n "${PYTHONPATH:-}" ]; then
  PYTHONPATH=$("$PY" -c 'import os, sys; print(os.pathsep.join(map(os.path.abspath, filter(None, sys.argv[1].split(os.pathsep)))))' "$PYTHONPATH")
  export PYTHONPATH
fi
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/benchmarks"
cp "$repo"/benchmarks/*.py "$tree/benchmarks/"
cp "$repo/pyproject.toml" "$tree/"
cd "$tree"
# A failing row (its check, or an error) still leaves the other rows' JSON: render them, then exit with
# pytest's status, so a long run is not lost to one row.
status=0
"$PY" -m pytest -p no:cacheprovider benchmarks ${1:+-k "$1"} --benchmark-json="$out" \
  --benchmark-columns=median,rounds --benchmark-group-by=group -q || status=$?
if [ -s "$out" ]; then
  "$PY" -m benchmarks.report "$out" --targets > "${out%.json}.md"
  echo "wrote ${out%.json}.md"
fi
exit "$status"
