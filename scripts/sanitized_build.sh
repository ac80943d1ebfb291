# Sourced by scripts/sanitize_cpu.sh and scripts/tsan_cpu.sh (not run alone), from the repository root:
# what both need before and for building a sanitized target of CMakeLists.txt. Sourcing it sets `PY` (the
# Python whose pybind11 CMake's configure step wants: $PYTHON, else python) and `work` (a temporary folder
# for logs, removed on exit).
PY=${PYTHON:-python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

#   sanitized_build BUILD_DIR TARGET FLAGS [more cmake arguments]
# builds TARGET with g++ (so that the sanitizer runtimes are g++'s own: clang's have other names) and
# CMAKE_CXX_FLAGS=FLAGS into BUILD_DIR, kept between runs (build/ is ignored) so a rerun recompiles only
# what changed; a BUILD_DIR configured with another compiler is started afresh (CMake would drop the other
# -D values). Sets `cxx`. FLAGS apply to the harness or bindings; the kernels keep the -O3 their target
# adds after them, so the vector code under test is the code users run.
sanitized_build() {
  local build=$1 target=$2 flags=$3
  shift 3
  cxx=$(command -v g++)
  if [ -f "$build/CMakeCache.txt" ] && ! grep -q "^CMAKE_CXX_COMPILER:[A-Z]*=$cxx\$" "$build/CMakeCache.txt"; then
    rm -rf "$build"
  fi
  cmake -S . -B "$build" -G Ninja -DGLANN_EXT_CUDA=OFF -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_COMPILER="$cxx" \
    -DCMAKE_CXX_FLAGS="$flags" -DPython_EXECUTABLE="$(command -v "$PY")" \
    -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" "$@" >"$work/cmake.log"
  cmake --build "$build" --target "$target" >"$work/build.log" || { tail -50 "$work/build.log"; return 1; }
}
