#!/usr/bin/env bash
# Fast in-place development build: compiles the extension into glann_ext/ so that
# `PYTHONPATH=. pytest` uses the working tree. CUDA off by default here (GLANN_EXT_CUDA=ON to compile
# it; CUDA_ARCHS=90 to compile a single architecture while iterating).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v "$PY")" \
  -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" \
  -DGLANN_EXT_CUDA="${GLANN_EXT_CUDA:-OFF}" -DGLANN_EXT_INPLACE=ON \
  ${CUDA_ARCHS:+-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS} >/dev/null
cmake --build build/dev -j "${JOBS:-2}"
