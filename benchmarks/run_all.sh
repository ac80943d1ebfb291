#!/usr/bin/env bash
# Runs every benchmark side by side and writes the tables to benchmarks/results-<host>.md
# (copy the figures into RESULTS.md with the machine and the command). Usage:
#   bash benchmarks/run_all.sh [pytest -k expression]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results-$(hostname).json}
pytest -p no:cacheprovider benchmarks ${1:+-k "$1"} --benchmark-json="$out" \
  --benchmark-columns=median,rounds --benchmark-group-by=group -q
python -m benchmarks.report "$out" > "${out%.json}.md"
echo "wrote ${out%.json}.md"
