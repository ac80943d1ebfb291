#!/usr/bin/env bash
# Installs glann_ext with its test dependencies into ./.venv and runs the test suite (CPU).
# GLANN_EXT_CUDA=ON (as CI sets it) also compiles the CUDA kernels with nvcc, so a broken kernel fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0            # the CPU build that lies on this machine's disk
GLANN_EXT_CUDA=${GLANN_EXT_CUDA:-AUTO} pip install -q ".[test]"
python scripts/check_extension.py       # the module is torch-free and reports what it was built with
bash scripts/check_format.sh            # C++/CUDA formatted with the pinned clang-format
pip install -q ruff==0.17.6                 # pinned: lint rules change between releases
ruff check glann_ext tests benchmarks scripts && ruff format --check glann_ext tests benchmarks scripts
# A test that hangs fails after 15 minutes with every thread's stack instead of using up CI's 90 minutes
# (the thread method, since a test sets its own SIGALRM)
pytest -q -p no:cacheprovider --timeout 900 --timeout-method thread tests "$@"
