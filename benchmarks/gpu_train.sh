#!/usr/bin/env bash
# One short GPU check (fits a few minutes of a lent H200): r50 training images/s at batch 512,
# the UIR fine-tuning recipe (head warm-up and full) at r50 and r100
# in bf16, peak memory, and the data loader's decode rate, each on one line.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d .venv ]; then
  python3 -m venv .venv
  . .venv/bin/activate
  pip install -q torch==2.13.0 && pip install -q -e .
else
  . .venv/bin/activate
fi
timeout 420 python benchmarks/gpu_train.py "$@"
