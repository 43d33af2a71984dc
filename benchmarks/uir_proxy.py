"""Does UIR work? The paper's two claims with statistical power: a feature-space protocol on one CPU.

    python benchmarks/uir_proxy.py [--quick] [--work /tmp/uir_proxy] [--seeds 20] [--steps 2000]
        [--declared-only] [--group 25] [--out results] [--labeled DIR] [--unlabeled DIR ...]
        [--pairs-from DIR] [--model ONNX] [--detector D]

(20 seeds x 21 arms: about 30 minutes on 2 cores when seeds trained one at a time; `--group`
seeds now train side by side, ~2x faster. `--declared-only --seeds 256`: `none` and each loss
at the declared weight only, for intervals on unknown-probe MSP narrow enough to read.)

Fine-tuning a whole recogniser on a CPU (`uir_finetune.py`) affords ~100 steps and 3 seeds, and
its seed-to-seed spread hides any effect. Here every face is embedded once by the pretrained
recogniser, and what is trained, per arm and seed, is a small embedding on top of those
features: an MLP (d -> 256 -> d, BatchNorm and PReLU) and an ArcFace head (s 64, m 0.5) over S's
identities. Thousands of steps take seconds, so 20 seeds per arm fit in minutes.

- Data, curated by the workbench exactly as in `uir_finetune.py` (its `prepare_data` and
  `curate`): S is a labeled identity-folder set (default celeba200); U is what `wb overlap`,
  `wb dedupe` and `wb split` leave as `train_unlabeled` of the unlabeled folders (default
  celeba10k and lfw150's one-photo people); unknown probes are the `eval_unknown` split (whole
  clusters, never trained on); verification pairs come from another set (lfw150's people with
  two or more photos). The vectors are the workbench's own, read with `wb embed --export`.
- Known probes: `--probes` photos per S identity, drawn per seed, never trained on.
- Arms: `none`; `reference` (the authors' released UIR) and `kl-uniform` (the paper's stated
  form) at weights 0.01, 0.1, 0.3 and 1.0; Objectosphere and the energy-bounded loss at 0.1 and
  1.0. The open-set term is `workbench.train.losses.open_set_loss`, the function `wb train`
  uses. Every batch holds the same labeled and unlabeled rows in every arm of a seed (the `none`
  arm ignores the unlabeled rows' loss but not their BatchNorm statistics), and the same
  initial weights: within a seed, arms differ only in the loss.
- The unlabeled set's size is swept (1k, 3k, all) at the declared weight for each loss, to test
  "more unlabeled data helps".
- Reported: each arm's mean over seeds, and each arm's paired difference from `none` with a
  95% t interval, for centre distance (claim a: sparser centres), unknown probes' MSP (claim b:
  lower unknown confidence), AUROC of known vs unknown probes by MSP, max cosine, energy and
  feature norm, FPR at 95% TPR, closed-set top-1 and verification accuracy.

The declared weight, fixed before any run, is `wb train`'s default (0.1): the verdict is read
there, so choosing the best of several weights cannot flatter it.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from uir_finetune import SHARED, curate, interval, prepare_data

from workbench.embed.compute import run_embed
from workbench.embed.models import ModelSpec
from workbench.embed.transfer import run_export
from workbench.evaluate import metrics as m
from workbench.labeled.pairs import generate_pairs
from workbench.manifest.workspace import Workspace
from workbench.train.heads import MarginHead
from workbench.train.loop import lr_lambda
from workbench.train.losses import open_set_loss

DECLARED_WEIGHT = 0.1  # wb train's default --uir-weight: where the verdict is read
WEIGHTS = (0.01, 0.1, 0.3, 1.0)
OTHER_WEIGHTS = (0.1, 1.0)
SIZES = (1000, 3000)  # besides all of U
SCALE = 64.0
METRICS = {  # label: (key, the direction the claim predicts: +1 up, -1 down, 0 none)
    "centre distance (mean 1-cos)": ("centre_distance", +1),
    "MSP unknown probes (mean)": ("msp_unknown", -1),
    "MSP known probes (mean)": ("msp_known", 0),
    "AUROC (MSP)": ("auroc_msp", +1),
    "AUROC (max cosine)": ("auroc_max_cos", +1),
    "AUROC (energy)": ("auroc_energy", +1),
    "AUROC (feature norm)": ("auroc_feature_norm", +1),
    "FPR@95TPR (MSP)": ("fpr95_msp", -1),
    "closed-set top-1": ("top1", 0),
    "verification accuracy": ("verification", 0),
}


@dataclass
class Features:
    """Everything the arms train and score on: pretrained vectors and their roles."""

    s_vectors: np.ndarray
    s_labels: np.ndarray
    u_vectors: np.ndarray
    unknown: np.ndarray
    pair_left: np.ndarray
    pair_right: np.ndarray
    issame: np.ndarray
    folds: np.ndarray


@dataclass(frozen=True)
class Arm:
    name: str
    loss: str
    weight: float
    unlabeled: int | None = None  # rows of U drawn per seed; None: all of it


class Proxy(nn.Module):
    """The trainable embedding on top of frozen pretrained features, and its margin head."""

    def __init__(self, dim: int, n_classes: int, hidden: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.PReLU(hidden),
                                 nn.Linear(hidden, dim), nn.BatchNorm1d(dim))
        self.head = MarginHead(dim, n_classes, "arcface", SCALE)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features before normalisation, and their cosines to every class centre."""
        f = self.mlp(x)
        return f, self.head.cosine(f)


def load_features(ws: Workspace, spec: ModelSpec, work: Path, pairs_per_fold: int) -> Features:
    """The workbench's stored vectors of every role, via `wb embed --export`."""
    run_embed(ws, model=spec, sets=["S", "pairs"], per_identity=1_000_000)
    exported = work / "vectors.parquet"
    run_export(ws, exported, spec)
    table = pq.read_table(exported)
    flat = table.column("vector").combine_chunks().flatten()
    vectors = np.asarray(flat, np.float32).reshape(table.num_rows, -1)
    with ws.connect(read_only=True) as con:  # each exported row's role (S, pairs or its split) and label
        roles = con.execute(
            "SELECT coalesce(v.set_name, sp.split) AS role, s.label FROM (SELECT row_number() OVER () "
            "AS pos, * FROM read_parquet($file)) v LEFT JOIN wb_splits sp ON sp.face_id = v.face_id "
            "LEFT JOIN wb_labeled_samples s ON s.set_name = v.set_name AND s.sample_idx = v.sample_idx "
            "ORDER BY v.pos", {"file": str(exported)}).fetchnumpy()
    role, label = roles["role"].astype(str), roles["label"]
    s_rows, p_rows = role == "S", role == "pairs"
    p_labels = np.asarray(label[p_rows], np.int64)
    left, right, folds = generate_pairs(p_labels, n_folds=10, pairs_per_fold=pairs_per_fold, seed=0)
    pairs = vectors[p_rows]
    return Features(vectors[s_rows], np.asarray(label[s_rows], np.int64),
                    vectors[role == "train_unlabeled"], vectors[role == "eval_unknown"],
                    pairs[left], pairs[right], p_labels[left] == p_labels[right], folds)


def holdout(labels: np.ndarray, per_identity: int, seed: int) -> np.ndarray:
    """A boolean mask of `per_identity` probes per identity (those with at least twice as many)."""
    rng = np.random.default_rng(seed)
    probe = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) >= 2 * per_identity:
            probe[rng.choice(members, per_identity, replace=False)] = True
    return probe


_FEATURES: Features | None = None  # a worker's copy, sent once when it starts


def _start_worker(features: Features) -> None:
    global _FEATURES
    _FEATURES = features
    torch.set_num_threads(1)  # small matrices: one process per core beats threads


def run_group(arm: Arm, seeds: list[int], args: dict[str, Any]) -> dict[int, dict[str, float]]:
    assert _FEATURES is not None
    return train_and_score(_FEATURES, arm, seeds, args)


@dataclass(frozen=True)
class Batches:
    """One seed's data: its held-out probes and, per step, the rows of S and U it trains on
    (drawn before any arm-specific choice, so every arm of a seed sees the same batches)."""

    probe: np.ndarray
    labeled: np.ndarray  # (steps, batch) positions in S
    unlabeled: np.ndarray  # (steps, n_u) positions in U

    @classmethod
    def draw(cls, features: Features, arm: Arm, seed: int, args: dict[str, Any]) -> Batches:
        probe = holdout(features.s_labels, args["probes"], seed)
        train_rows = np.flatnonzero(~probe)
        rng = np.random.default_rng(seed)
        steps, batch, n_u = args["steps"], args["batch_size"], args["unlabeled_per_batch"]
        labeled = train_rows[rng.integers(0, len(train_rows), (steps, batch))]
        u_rows = np.arange(len(features.u_vectors))
        if arm.unlabeled is not None and arm.unlabeled < len(u_rows):
            u_rows = np.random.default_rng(10_000 + seed).choice(len(u_rows), arm.unlabeled, replace=False)
        unlabeled = u_rows[rng.integers(0, 1 << 62, (steps, n_u)) % len(u_rows)]
        return cls(probe, labeled, unlabeled)


def train_and_score(features: Features, arm: Arm, seeds: list[int],
                    args: dict[str, Any]) -> dict[int, dict[str, float]]:
    """One arm, several seeds trained side by side: each seed's proxy (its own initial weights,
    `torch.manual_seed(seed)`) is a slice of stacked parameters, and one vectorised step
    (`torch.func.vmap`) trains them all. Every parameter's update is elementwise (SGD with
    momentum and weight decay) and the loss is the sum of the seeds' own losses, so each seed
    trains exactly as it would alone; only the arithmetic is shared."""
    classes = np.unique(features.s_labels)
    draws = [Batches.draw(features, arm, seed, args) for seed in seeds]
    for d in draws:  # probes are held out only from identities that keep training faces
        assert np.array_equal(np.unique(features.s_labels[~d.probe]), classes)
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(Proxy(features.s_vectors.shape[1], len(classes)))
    params, buffers = stack_module_state(models)
    template = copy.deepcopy(models[0]).to("meta")
    head = models[0].head  # its margins and scale; the weights come from `params`

    def seed_loss(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rows: torch.Tensor,
                  labels: torch.Tensor) -> torch.Tensor:
        f, cos = functional_call(template, (p, b), (rows,))
        loss = head.loss(cos[: len(labels)], labels)
        if arm.loss != "none":
            loss = loss + arm.weight * open_set_loss(arm.loss, cos, len(labels), SCALE, f)
        return loss

    step_losses = vmap(seed_loss)
    steps = args["steps"]
    optimiser = torch.optim.SGD(params.values(), lr=args["lr"], momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_lambda(steps // 20, steps))
    xs, us = torch.from_numpy(features.s_vectors), torch.from_numpy(features.u_vectors)
    ys = torch.from_numpy(np.searchsorted(classes, features.s_labels))
    labeled = torch.from_numpy(np.stack([d.labeled for d in draws], axis=1))  # (steps, seeds, batch)
    unlabeled = torch.from_numpy(np.stack([d.unlabeled for d in draws], axis=1))
    for step in range(steps):
        rows = torch.cat([xs[labeled[step]], us[unlabeled[step]]], dim=1)
        loss = step_losses(params, buffers, rows, ys[labeled[step]]).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    results = {}
    for i, (seed, d) in enumerate(zip(seeds, draws, strict=True)):
        model = models[i]
        model.load_state_dict({**{k: v[i].detach() for k, v in params.items()},
                               **{k: v[i] for k, v in buffers.items()}})
        results[seed] = score(model, features, d.probe, classes)
    return results


@torch.no_grad()
def score(model: Proxy, features: Features, probe: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    model.eval()

    def embed(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = model.mlp(torch.from_numpy(x)).numpy()
        norms = np.linalg.norm(f, axis=1)
        return f / norms[:, None], norms

    centres = model.head.weight.numpy()
    centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    known, known_norm = embed(features.s_vectors[probe])
    known_labels = np.searchsorted(classes, features.s_labels[probe])
    unknown, unknown_norm = embed(features.unknown)
    ks, us = m.open_set_scores(known, centres, SCALE), m.open_set_scores(unknown, centres, SCALE)
    left, right = embed(features.pair_left)[0], embed(features.pair_right)[0]
    accuracy = m.verification_accuracy(np.einsum("nd,nd->n", left, right), features.issame, features.folds)[0]
    return {"centre_distance": float(m.pairwise_cosine_distances(centres)[0].mean()),
            "msp_unknown": float(us.msp.mean()), "msp_known": float(ks.msp.mean()),
            "auroc_msp": m.auroc(ks.msp, us.msp), "auroc_max_cos": m.auroc(ks.max_cos, us.max_cos),
            "auroc_energy": m.auroc(ks.energy, us.energy),
            "auroc_feature_norm": m.auroc(known_norm, unknown_norm),
            "fpr95_msp": m.fpr_at_tpr(ks.msp, us.msp, 0.95),
            "top1": float((ks.pred == known_labels).mean()),
            "verification": accuracy}


def arms(n_u: int, declared_only: bool) -> list[Arm]:
    """`none`, each loss at each weight, and the size sweep; only `none` and each loss at the
    declared weight when `declared_only` (for many seeds)."""
    out = [Arm("none", "none", 0.0)]
    for loss, weights in (("reference", WEIGHTS), ("kl-uniform", WEIGHTS), ("objectosphere", OTHER_WEIGHTS),
                          ("energy", OTHER_WEIGHTS)):
        for w in (DECLARED_WEIGHT,) if declared_only else weights:
            out.append(Arm(f"{loss} w={w:g}", loss, w))
    for loss in ("reference", "kl-uniform", "objectosphere", "energy"):
        for size in SIZES:
            if size < n_u and not declared_only:
                out.append(Arm(f"{loss} w={DECLARED_WEIGHT:g}, U={size}", loss, DECLARED_WEIGHT, size))
    return out


def verdict(low: float, high: float, direction: int) -> str:
    """What a paired interval says about a claim that predicts `direction`."""
    if low > 0 or high < 0:
        moved = "up" if low > 0 else "down"
        if direction == 0:
            return f"moves {moved}"
        return "holds" if (low > 0) == (direction > 0) else "reversed"
    return "no effect found"


def report(results: dict[str, dict[int, dict[str, float]]]) -> tuple[str, dict[str, Any]]:
    names = list(results)
    seeds = sorted(results["none"])
    lines = [f"Means over {len(seeds)} seeds:", "", "| metric | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for label, (key, _) in METRICS.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{np.mean([results[n][s][key] for s in seeds]):.4f}" for n in names) + " |")
    summary: dict[str, Any] = {}
    lines += ["", "Paired difference from `none` (arm - none), mean [95% interval], and what it says:", ""]
    others = [n for n in names if n != "none"]
    lines += ["| metric | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
    for label, (key, direction) in METRICS.items():
        cells = []
        for n in others:
            d = np.array([results[n][s][key] - results["none"][s][key] for s in seeds])
            mean, low, high = interval(d)
            said = verdict(low, high, direction)
            summary.setdefault(n, {})[key] = {"mean": mean, "low": low, "high": high, "width": high - low,
                                              "verdict": said}
            cells.append(f"{mean:+.4f} [{low:+.4f}, {high:+.4f}] {said}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines), summary


def span(d: dict[str, float]) -> str:
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def conclusions(summary: dict[str, Any]) -> str:
    """The two claims, read at the declared weight for each loss, and the size sweep."""
    lines = [f"At the declared weight {DECLARED_WEIGHT:g}:"]
    for loss in ("reference", "kl-uniform", "objectosphere", "energy"):
        arm = summary.get(f"{loss} w={DECLARED_WEIGHT:g}")
        if arm is None:
            continue
        a, b, auc = arm["centre_distance"], arm["msp_unknown"], arm["auroc_msp"]
        lines.append(f"- {loss}: (a) sparser centres {a['verdict']} ({span(a)}); (b) lower unknown MSP "
                     f"{b['verdict']} ({span(b)}); AUROC (MSP) {auc['verdict']} ({span(auc)}; interval "
                     f"widths: AUROC {auc['width']:.4f}, MSP {b['width']:.4f})")
        for name, s in summary.items():
            if name.startswith(f"{loss} w={DECLARED_WEIGHT:g}, U="):
                lines.append(f"  - with {name.split('U=')[1]} unlabeled faces: unknown MSP "
                             f"{span(s['msp_unknown'])}, AUROC (MSP) {span(s['auroc_msp'])}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/uir_proxy"))
    parser.add_argument("--labeled", type=Path, default=SHARED / "data" / "celeba200")
    parser.add_argument("--unlabeled", type=Path, nargs="+", default=None,
                        help="unlabeled image folders (default: celeba10k and lfw150's one-photo people)")
    parser.add_argument("--pairs-from", type=Path, default=SHARED / "data" / "lfw150")
    parser.add_argument("--model", type=Path, default=SHARED / "models" / "mobilefacenet_128d.onnx")
    parser.add_argument("--detector", default=f"yunet:{SHARED / 'models' / 'yunet_s_640_640.onnx'}")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128, help="labeled rows per batch")
    parser.add_argument("--unlabeled-per-batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--probes", type=int, default=5, help="known probes held out per S identity")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--group", type=int, default=25, help="seeds trained side by side in one process")
    parser.add_argument("--declared-only", action="store_true",
                        help="only `none` and each loss at the declared weight (to afford more seeds)")
    parser.add_argument("--out", default="results", help="name of the results files under --work")
    parser.add_argument("--quick", action="store_true", help="a smoke run in a few minutes")
    args = parser.parse_args()
    if not args.labeled.exists() or not args.model.exists():
        raise SystemExit(f"needs {args.labeled} and {args.model} (../shared, or pass --labeled/--model)")
    if args.quick:
        args.work = args.work.with_name(args.work.name + "-quick")
        args.seeds, args.steps, args.declared_only = min(args.seeds, 4), min(args.steps, 400), True
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    ws = Workspace.at(args.work / "ws")
    spec = ModelSpec.parse(f"onnx:{args.model}")
    args.truth, args.pairs_per_fold = None, 60
    curated = curate(ws, args, prepare_data(args), spec)
    features = load_features(ws, spec, args.work, pairs_per_fold=60 if args.quick else 300)
    prepared = time.perf_counter() - started
    print(f"S {len(features.s_vectors)} faces of {len(np.unique(features.s_labels))} people, U "
          f"{len(features.u_vectors)}, unknown probes {len(features.unknown)}, pairs {len(features.issame)}; "
          f"curation and vectors {prepared:.0f} s", flush=True)
    settings = {k: getattr(args, k) for k in ("steps", "batch_size", "unlabeled_per_batch", "lr", "probes")}
    groups = [list(range(args.seeds))[i : i + args.group] for i in range(0, args.seeds, args.group)]
    plan = [(arm, group) for arm in arms(len(features.u_vectors), args.declared_only) for group in groups]
    results: dict[str, dict[int, dict[str, float]]] = {}
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_worker, initargs=(features,)) as pool:
        futures = [(arm, pool.submit(run_group, arm, group, settings)) for arm, group in plan]
        for done, (arm, future) in enumerate(futures, 1):
            results.setdefault(arm.name, {}).update(future.result())
            print(f"{done}/{len(futures)} groups of up to {args.group} seeds, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    text, summary = report(results)
    text += "\n\n" + conclusions(summary)
    total = time.perf_counter() - started
    (args.work / f"{args.out}.json").write_text(json.dumps(
        {"settings": {**settings, "seeds": args.seeds}, "curation": curated.get("split"), "results": results,
         "summary": summary, "total_s": total}, indent=1, default=str))
    (args.work / f"{args.out}.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\ntotal: {total / 60:.1f} min; results in {args.work / args.out}.md")


if __name__ == "__main__":
    main()
