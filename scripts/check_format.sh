#!/usr/bin/env bash
# Checks that every C++/CUDA file of csrc/, python/ and tests/cpp/ is formatted by .clang-format, with the
# clang-format release .pre-commit-config.yaml pins (formatting changes between releases).
# Fix with: clang-format -i $(the same files).
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q clang-format==19.1.6
files=$(find csrc python tests/cpp -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) | sort)
clang-format --dry-run --Werror $files
echo "clang-format $(clang-format --version | grep -o '[0-9][0-9.]*' | head -1): $(echo "$files" | wc -l) files OK"
