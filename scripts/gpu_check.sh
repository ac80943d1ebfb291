#!/usr/bin/env bash
# One prepared run for a lent GPU machine (issue 5): build with CUDA for the local GPU, run the CUDA
# tests, compute-sanitizer (memcheck, racecheck) on the kernel tests, and the benchmarks with CUDA rows.
# Writes logs and benchmark tables under ${OUT:-gpu-out}/. Usage on the device:
#   OUT=$OUT bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
{ nvidia-smi; nvcc --version; python -c "import torch; print(torch.__version__, torch.version.cuda)"; } > "$OUT/env.txt" 2>&1
arch=$(python -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}{n}')")
GLANN_EXT_CUDA=ON pip install -q --no-build-isolation . -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$arch" \
  > "$OUT/build.log" 2>&1 || { echo "build failed"; tail -50 "$OUT/build.log"; exit 1; }
cd "$OUT"  # import the installed package, not the source folder
REPO=$(cd - >/dev/null; pwd)
python -c "import glann_ext; print(glann_ext.build_info())" | tee info.txt
timeout 900 pytest -q -p no:cacheprovider -m cuda "$REPO/tests" > cuda-tests.log 2>&1; echo "cuda tests rc=$?"
tail -3 cuda-tests.log
for tool in memcheck racecheck; do
  timeout 600 compute-sanitizer --tool "$tool" --error-exitcode 9 \
    python -m pytest -q -p no:cacheprovider -m cuda -x "$REPO/tests/test_nn_argmin.py" \
    "$REPO/tests/test_laplacian.py" "$REPO/tests/test_sphere.py" -k "not ten_million and not compile" \
    > "sanitizer-$tool.log" 2>&1
  echo "compute-sanitizer $tool rc=$?"
done
timeout 1200 pytest -p no:cacheprovider "$REPO/benchmarks" -k cuda --benchmark-json=bench-cuda.json \
  --benchmark-group-by=group -q > bench.log 2>&1; echo "benchmarks rc=$?"
(cd "$REPO" && python -m benchmarks.report "$OLDPWD/bench-cuda.json") > bench-cuda.md 2>&1
