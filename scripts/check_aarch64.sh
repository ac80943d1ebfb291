#!/usr/bin/env bash
# Compiles the framework-free kernels (csrc/, without the x86-only *_avx*.cpp) with an aarch64 cross
# compiler, so the portable build cannot break unnoticed on an x86-only CI. Installs the compiler from
# Debian when it is missing and apt-get is usable.
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${CXX_AARCH64:-aarch64-linux-gnu-g++}
if ! command -v "$CXX" >/dev/null; then
  apt-get update -qq && apt-get install -y -qq g++-aarch64-linux-gnu >/dev/null
fi
out=$(mktemp -d)
status=0
for src in $(ls csrc/*/*.cpp | grep -v "_avx"); do
  extra=""
  case "$src" in csrc/sphere/sphere_cpu*.cpp) extra="-ffp-contract=off" ;; esac  # as CMakeLists.txt
  "$CXX" -std=gnu++17 -O2 -Wall -Wextra -Wno-unused-parameter -Werror $extra -Icsrc -c "$src" \
    -o "$out/$(basename "$src").o" || status=1
done
rm -rf "$out"
[ $status = 0 ] && echo "aarch64 cross-compile of csrc/: OK"
exit $status
