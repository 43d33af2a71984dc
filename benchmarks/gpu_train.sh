#!/usr/bin/env bash
# The GPU check as one call (benchmarks/gpu_train.py: the real `wb` loop at 85,742 classes, r50 bf16).
#
# The GPU machine lent for checks is offline, runs Python 3.12 with torch, numpy, pyarrow, onnx,
# onnxruntime, opencv, typer, rich, scipy, matplotlib and tensorboard, and lacks duckdb and
# faiss. Where pip works, first:   bash benchmarks/gpu_wheels.sh    (writes .whl/, ~43 MB)
# then carry .whl to the GPU machine and run this script there. Elsewhere (a GPU box with the
# project installed) it runs as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import duckdb, faiss" 2>/dev/null; then
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/wb-site .whl/*.whl
    export PYTHONPATH="/tmp/wb-site"
  else
    echo "duckdb and faiss are missing: run benchmarks/gpu_wheels.sh where pip works, then carry .whl" >&2
    exit 2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout 470 python3 benchmarks/gpu_train.py "$@"
