"""UIR vs baseline on the lfw150 scenario: --uir-loss none, reference and kl-uniform, 2 seeds each.

    python benchmarks/uir_vs_baseline.py [--work /tmp/overlap_lfw] [--steps 300]

Uses the overlap benchmark's workspace (run benchmarks/overlap_lfw.py first, or
pass the same --work): its labeled set (292 known identities), and `wb split`
of its curated unlabeled faces. Same init seed per pair of arms, same data and
steps. Small CPU config: iresnet18 at half width, 56 px input, 128-d
embeddings, batch 64 (16 unlabeled), SGD lr 0.1, ~4-5 minutes per run on 2
cores. Prints the comparison table and writes the HTML report.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from workbench.curate.splits import run_split
from workbench.evaluate.compare import ROWS, run_compare
from workbench.evaluate.evaluate import run_eval
from workbench.manifest.workspace import Workspace
from workbench.train.config import TrainConfig
from workbench.train.run import run_train

CONFIG = dict(labeled="lfwknown", backbone="r18", width=0.5, input_size=56, num_features=128,
              batch_size=64, lr=0.1, num_workers=2, checkpoint_every=10_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/overlap_lfw"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    ws = Workspace.at(args.work / "ws")
    if not ws.exists():
        raise SystemExit(f"no workspace at {ws.root}: run benchmarks/overlap_lfw.py --work {args.work}")
    print("split:", json.dumps(run_split(ws, eval_unknown=0.1, seed=0).splits))
    runs = []
    for kind in ("none", "reference", "kl-uniform"):
        for seed in args.seeds:
            start = time.perf_counter()
            result = run_train(ws, TrainConfig(uir_loss=kind, steps=args.steps, seed=seed, **CONFIG))
            metrics = run_eval(ws, result.run_id)
            runs.append(result.run_id)
            print(f"{kind:<11} seed {seed}: {time.perf_counter() - start:5.0f} s, "
                  f"AUROC {metrics.open_set.get('auroc_msp', float('nan')):.4f}, "
                  f"verification {metrics.verification.get('accuracy', float('nan')):.4f}", flush=True)
    report = run_compare(ws, runs, args.work / "uir_vs_baseline")
    names = [a["arm"] for a in report.arms]
    print(f"\n{'metric':<26}" + "".join(f"{n:>26}" for n in names))
    for label, _ in ROWS:
        cells = []
        for arm in report.arms:
            cell = arm[label]
            cells.append("n/a" if cell is None else f"{cell[0]:.4f} ± {cell[1]:.4f}")
        print(f"{label:<26}" + "".join(f"{c:>26}" for c in cells))
    print(f"\nreport: {report.report}")


if __name__ == "__main__":
    main()
