#!/usr/bin/env bash
# Wheels of what the offline GPU machine lacks (duckdb, faiss-cpu), for its Python (default 3.12),
# into .whl/ (git-ignored; carried to that machine by benchmarks/gpu_train.sh's caller).
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-3.12}"
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "duckdb>=2.0,<3" "faiss-cpu>=1.8"
du -sh .whl
