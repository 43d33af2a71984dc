"""Fine-tune a pretrained MobileFaceNet with UIR on real faces; measure the paper's two claims over seeds.

    python benchmarks/uir_finetune.py [--quick] [--sweep] [--work /tmp/uir_finetune]
        [--labeled DIR] [--unlabeled DIR ...] [--truth labels.csv] [--pairs-from DIR]
        [--model mobilefacenet_128d.onnx] [--detector yunet:PATH] [--seeds 0 1 2]

Yu et al. fine-tuned a trained ArcFace model with the UIR loss added and report
(a) class centres moving apart and (b) a lower max softmax probability for
people never seen, so unknown people are easier to reject. This benchmark asks
the same of the shipped pretrained recogniser, on a CPU:

- S: a labeled identity-folder set (default ../shared/data/celeba200), detected
  and aligned by the workbench; 2 photos per identity are held out as known probes.
- U: unlabeled folders (default celeba10k and the single-photo identities of
  lfw150), curated by the workbench itself with the same model: `wb overlap`
  against S, `wb dedupe`, `wb split` (10% of clean faces held out as whole
  clusters: eval_unknown, never trained on).
- Verification: pairs from another folder set (default: lfw150 identities with
  two or more photos), people and photos no arm trains on.
- Arms, each from the same ONNX weights: `pretrained` (backbone frozen, only the
  ArcFace head trained: the model's own figures), then `none`, `reference`,
  `kl-uniform`, `objectosphere` and `energy` (weight 0.1) fine-tuned for the same
  steps: a head warm-up with the backbone frozen, then everything at backbone lr x
  0.1. Every arm sees the same labeled and unlabeled batches per seed; only the
  loss differs. (`uir_proxy.py` asks the same with the power a CPU affords.)
- On a GPU the same command runs the comparison at the scale `gpu_train.sh` times:
  `--device cuda --amp bf16 --batch-size 512 --steps 2000 --seeds 0 1 ... 19`.
- Reported per arm: mean +- std over seeds, and each other arm's paired difference
  from `none` with a 95% t interval. `--sweep` adds weights 0.3 and 1.0.
  Evaluation embeds single crops (no flip averaging) to fit a 2-core CPU's hour.

Everything is recorded in the workspace; a re-run reuses finished steps and runs.
Data paths are arguments, so the same benchmark runs on other people's faces.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from workbench.curate.dedupe import run_dedupe
from workbench.curate.overlap import run_overlap
from workbench.curate.splits import run_split
from workbench.embed.models import ModelSpec
from workbench.evaluate.compare import run_compare
from workbench.evaluate.evaluate import run_eval
from workbench.ingest.pipeline import run_ingest
from workbench.labeled.pairs import write_pairs
from workbench.labeled.register import register_labeled
from workbench.manifest.workspace import Workspace
from workbench.train.config import TrainConfig
from workbench.train.losses import OPEN_SET_LOSSES
from workbench.train.run import train_or_reuse

SHARED = Path(__file__).resolve().parents[2] / "shared"
METRICS = {  # label -> path into `wb eval` results
    "centre distance (mean cos)": ("centre_distance", "mean"),
    "MSP eval_unknown (mean)": ("open_set", "msp_eval_unknown", "mean"),
    "MSP known probes (mean)": ("open_set", "msp_known", "mean"),
    "AUROC (MSP)": ("open_set", "auroc_msp"),
    "AUROC (max cosine)": ("open_set", "auroc_max_cos"),
    "AUROC (energy)": ("open_set", "auroc_energy"),
    "AUROC (feature norm)": ("open_set", "auroc_feature_norm"),
    "FPR@95TPR (MSP)": ("open_set", "fpr_at_95_tpr"),
    "DIR@FPIR 1e-2": ("open_set", "dir_at_fpir_1e-2"),
    "closed-set top-1": ("open_set", "closed_set_top1"),
    "verification acc": ("verification", "accuracy"),
}


def link_folder(out: Path, groups: dict[str, list[Path]]) -> Path:
    """An identity-folder (or flat, for one group named '') tree of symlinks: subsets without copies."""
    for name, files in groups.items():
        folder = out / name if name else out
        folder.mkdir(parents=True, exist_ok=True)
        for f in files:
            link = folder / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    return out


def identities(root: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            for d in sorted(root.iterdir()) if d.is_dir()}


def prepare_data(args: argparse.Namespace) -> dict[str, Any]:
    """The three data sources as folders (subsets as symlinks under --work)."""
    data = args.work / "data"
    labeled = identities(args.labeled)
    if args.quick:
        labeled = dict(list(labeled.items())[:40])
    s_dir = link_folder(data / "S", labeled) if args.quick else args.labeled
    unlabeled = args.unlabeled
    if unlabeled is None:
        lfw = identities(SHARED / "data" / "lfw150")
        singles = [files[0] for files in lfw.values() if len(files) == 1]
        celeba = sorted((SHARED / "data" / "celeba10k" / "images").iterdir())
        if args.quick:
            singles, celeba = singles[:150], celeba[:600]
        unlabeled = [link_folder(data / "U-celeba10k", {"": celeba}),
                     link_folder(data / "U-lfw-singles", {"": singles})]
    pair_ids = {k: v for k, v in identities(args.pairs_from).items() if len(v) >= 2}
    if args.quick:
        pair_ids = dict(list(pair_ids.items())[:60])
    pairs_dir = link_folder(data / "pairs", pair_ids)
    return {"S": s_dir, "U": unlabeled, "pairs": pairs_dir}


def curate(ws: Workspace, args: argparse.Namespace, data: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    workers = os.cpu_count() or 1
    out["S"] = register_labeled(ws, "S", data["S"], fmt="folder", aligned=False, detector=args.detector,
                                workers=workers).as_dict()
    for folder in data["U"]:
        out[f"ingest {folder.name}"] = run_ingest(ws, folder, source=folder.name, detector=args.detector,
                                                  workers=workers).as_dict()
    register_labeled(ws, "pairs", data["pairs"], fmt="folder", aligned=False, detector=args.detector,
                     workers=workers)
    pairs = args.work / "pairs.bin"
    if not pairs.exists():
        out["pairs"] = write_pairs(ws, "pairs", pairs, n_folds=10, pairs_per_fold=args.pairs_per_fold,
                                   seed=0).as_dict()
    out["overlap"] = run_overlap(ws, "S", model=spec).as_dict()
    out["dedupe"] = run_dedupe(ws, model=spec, labeled_set="S").as_dict()
    out["split"] = run_split(ws, eval_unknown=0.1, seed=0).as_dict()
    if args.truth:
        out["truth"] = curation_truth(ws, args.truth, data)
    return out


def curation_truth(ws: Workspace, truth: Path, data: dict[str, Any]) -> dict[str, Any]:
    """How the curation did on faces whose identity is known (celeba10k's labels.csv): faces of S's
    people should be excluded, the others kept."""
    with open(truth) as handle:
        who = {row["file"]: row["identity"] for row in csv.DictReader(handle)}
    in_s = {p.name for p in Path(data["S"]).iterdir()}
    with ws.connect(read_only=True) as con:
        rows = con.execute("SELECT i.path, s.split, s.reason FROM wb_splits s "
                           "JOIN wb_faces f USING (face_id) JOIN wb_images i ON i.image_id = f.image_id"
                           ).fetchall()
    known = [r for r in rows if who.get(Path(r[0]).name) in in_s]
    unknown = [r for r in rows if Path(r[0]).name in who and who[Path(r[0]).name] not in in_s]
    return {"faces of S's people": len(known),
            "excluded of those": sum(r[1] == "excluded" for r in known),
            "faces of other people": len(unknown),
            "excluded for overlap or copy of those": sum(r[2] in ("overlap", "ambiguous overlap",
                                                                  "copy of a labeled photo")
                                                         for r in unknown)}


def value(results: dict[str, Any], path: tuple[str, ...]) -> float:
    for key in path:
        results = results.get(key, {}) if isinstance(results, dict) else {}
    return float(results) if isinstance(results, int | float) else float("nan")


def arms(args: argparse.Namespace) -> list[tuple[str, dict[str, Any], list[int]]]:
    tune = {"freeze_backbone_steps": args.warmup, "steps": args.warmup + args.steps}
    out = [("pretrained", {"uir_loss": "none", "freeze_backbone_steps": args.warmup + args.steps,
                           "steps": args.warmup + args.steps}, args.seeds[:1])]
    out += [(name, {"uir_loss": name, **tune}, args.seeds)
            for name in ("none", "reference", "kl-uniform", *OPEN_SET_LOSSES)]
    if args.sweep:
        out += [(f"{name} w={w:g}", {"uir_loss": name, "uir_weight": w, **tune}, args.seeds)
                for name in ("reference", "kl-uniform") for w in (0.3, 1.0)]
    return out


def interval(diffs: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t interval of paired differences."""
    mean = float(diffs.mean())
    half = float(scipy.stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs)))
    return mean, mean - half, mean + half


def paired(diffs: list[float]) -> str:
    d = np.asarray(diffs)
    if len(d) < 2:
        return f"{d.mean():+.4f}"
    mean, low, high = interval(d)
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/uir_finetune"))
    parser.add_argument("--labeled", type=Path, default=SHARED / "data" / "celeba200")
    parser.add_argument("--unlabeled", type=Path, nargs="+", default=None,
                        help="unlabeled image folders (default: celeba10k and lfw150's single-photo people)")
    parser.add_argument("--truth", type=Path, default=SHARED / "data" / "celeba10k" / "labels.csv")
    parser.add_argument("--pairs-from", type=Path, default=SHARED / "data" / "lfw150")
    parser.add_argument("--model", type=Path, default=SHARED / "models" / "mobilefacenet_128d.onnx")
    parser.add_argument("--detector", default=f"yunet:{SHARED / 'models' / 'yunet_s_640_640.onnx'}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=80, help="fine-tuning steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=30, help="head warm-up steps, backbone frozen")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pairs-per-fold", type=int, default=60)
    parser.add_argument("--device", default="cpu", help="cuda: the comparison at GPU scale")
    parser.add_argument("--amp", default="none", help="bf16 on a GPU")
    parser.add_argument("--quick", action="store_true", help="a smoke check in a few minutes")
    parser.add_argument("--sweep", action="store_true", help="also UIR weights 0.3 and 1.0")
    args = parser.parse_args()
    if args.quick:
        args.work = args.work.with_name(args.work.name + "-quick")
        args.seeds, args.steps, args.warmup, args.pairs_per_fold = args.seeds[:1], 6, 4, 20
    if not args.labeled.exists() or not args.model.exists():
        raise SystemExit(f"needs {args.labeled} and {args.model} (../shared, or pass --labeled/--model)")
    started = time.perf_counter()
    ws = Workspace.at(args.work / "ws")
    spec = ModelSpec.parse(f"onnx:{args.model}")
    timings: dict[str, float] = {}
    tic = time.perf_counter()
    data = prepare_data(args)
    curated = curate(ws, args, data, spec)
    timings["curation"] = time.perf_counter() - tic
    print("curation:", json.dumps({k: curated[k] for k in ("split", "truth") if k in curated}, default=str))
    base = dict(labeled="S", init=f"onnx:{args.model}", batch_size=args.batch_size, unlabeled_ratio=0.25,
                lr=0.1, backbone_lr_mult=0.1, warmup_steps=0, num_workers=2, checkpoint_every=100_000,
                holdout_per_identity=2, holdout_min_samples=6, device=args.device, amp=args.amp)
    table: dict[str, dict[int, dict[str, float]]] = {}
    run_ids = []
    for name, overrides, seeds in arms(args):
        for seed in seeds:
            tic = time.perf_counter()
            result = train_or_reuse(ws, TrainConfig(seed=seed, **base, **overrides))
            trained = time.perf_counter() - tic
            results = run_eval(ws, result.run_id, pairs_file=args.work / "pairs.bin",
                               unlabeled_sample=500, flip=False)
            table.setdefault(name, {})[seed] = {label: value(results.as_dict(), path)
                                                for label, path in METRICS.items()}
            run_ids.append(result.run_id)
            timings[f"{name} seed {seed}"] = time.perf_counter() - tic
            reused = " (reused)" if result.reused else ""
            print(f"{name:<16} seed {seed}: train {trained:4.0f} s{reused}, with eval "
                  f"{timings[f'{name} seed {seed}']:4.0f} s, AUROC {table[name][seed]['AUROC (MSP)']:.4f}",
                  flush=True)
    report = run_compare(ws, run_ids, args.work / "report")
    lines = [f"| metric | {' | '.join(table)} |", "|---|" + "---|" * len(table)]
    for label in METRICS:
        cells = []
        for per_seed in table.values():
            v = np.array([m[label] for m in per_seed.values()])
            cells.append(f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v.mean():.4f}")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    diffs = ["", "| paired difference from `none` (95% CI) | " + " | ".join(
        n for n in table if n not in ("pretrained", "none")) + " |",
             "|---|" + "---|" * (len(table) - 2)]
    for label in METRICS:
        cells = [paired([table[n][s][label] - table["none"][s][label] for s in table[n]])
                 for n in table if n not in ("pretrained", "none")]
        diffs.append(f"| {label} | {' | '.join(cells)} |")
    text = "\n".join(lines + diffs)
    total = time.perf_counter() - started
    summary = {"curation": curated, "table": table, "timings_s": timings, "total_s": total,
               "report": report.report, "warnings": report.warnings, "settings": vars(args)}
    (args.work / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    (args.work / "results.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\nreport: {report.report}\n"
          f"total: {total / 60:.1f} min ({timings['curation'] / 60:.1f} min curation)")


if __name__ == "__main__":
    main()
