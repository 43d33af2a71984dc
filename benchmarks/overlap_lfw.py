"""Overlap and dedupe quality on the lfw150 scenario, beside a plain baseline in the same run.

    python benchmarks/overlap_lfw.py [--lfw ../shared/data/lfw150] [--work /tmp/overlap_lfw]
        [--model dlib] [--detector yunet]

Builds the scenario (benchmarks/lfw_scenario.py), then runs the workbench as
a user would: ingest the web folder, register the labeled part, `overlap`
(`--model`, flip-averaged; dlib by default) and `dedupe`. It prints:
- precision/recall of face-level overlap decisions: the workbench's score
  swept over thresholds, the point `auto` chose, and ablations;
- the baseline: cosine to each identity's normalised mean centre, one global
  threshold, on the same embeddings;
- near-duplicate recall and the share of distinct photos of one person merged.
Evaluation uses each image's primary face (the ground truth is per image).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import duckdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lfw_scenario import DEFAULT_LFW, build

from workbench.curate.calibrate import OverlapTargets
from workbench.curate.dedupe import run_dedupe
from workbench.curate.overlap import OverlapSettings, run_overlap
from workbench.embed.models import ModelSpec
from workbench.embed.store import EmbeddingStore
from workbench.faces.detectors import DetectorSpec
from workbench.ingest.pipeline import run_ingest
from workbench.labeled import registry
from workbench.labeled.register import register_labeled
from workbench.manifest.workspace import Workspace

SET = "lfwknown"


def pr_at_recall(scores: np.ndarray, positive: np.ndarray, recalls: tuple[float, ...]) -> dict[float, tuple]:
    """Best precision (and its threshold) among thresholds reaching each recall."""
    order = np.argsort(-scores)
    tp = np.cumsum(positive[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / max(positive.sum(), 1)
    out = {}
    for target in recalls:
        ok = recall >= target
        if not ok.any():
            out[target] = (float("nan"), float("nan"))
            continue
        best = np.argmax(np.where(ok, precision, -1))
        out[target] = (float(precision[best]), float(scores[order][best]))
    return out


def precision_recall(flagged: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    tp = (flagged & positive).sum()
    return tp / max(flagged.sum(), 1), tp / max(positive.sum(), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW)
    parser.add_argument("--work", type=Path, default=Path("/tmp/overlap_lfw"))
    parser.add_argument("--fpir", type=float, default=0.01)
    parser.add_argument("--model", default="dlib", help="any wb --model text")
    parser.add_argument("--detector", default="yunet", help="any wb --detector text")
    args = parser.parse_args()
    if not args.lfw.is_dir():
        raise SystemExit(f"lfw150 not found at {args.lfw}")
    scenario = build(args.lfw, args.work / "data")
    ws = Workspace.at(args.work / "ws")
    detector = DetectorSpec.parse(args.detector)
    run_ingest(ws, scenario.web, source="web", detector=args.detector)
    register_labeled(ws, SET, scenario.labeled, detector=detector)
    targets = OverlapTargets(fpir=args.fpir, per_identity=1000)
    spec = ModelSpec.parse(args.model, flip=True)
    summary = run_overlap(ws, SET, model=spec, flip=True, settings=OverlapSettings(targets=targets))
    dedupe = run_dedupe(ws, model=spec, flip=True)
    print("overlap:", json.dumps({k: getattr(summary, k) for k in (
        "faces", "copy", "overlap", "ambiguous", "clean", "threshold", "ambiguous_from", "link_cosine",
        "clusters")}))
    print("calibration:", json.dumps(summary.calibration, default=float))

    con = duckdb.connect(str(ws.manifest_path), read_only=True)
    rows = con.execute("""
        SELECT f.face_id, regexp_extract(i.path, '[^/]+$') AS name, o.score, o.decision, o.similarity,
               c.cluster_id, d.group_id, coalesce(o.cluster_score, -1e9)
        FROM wb_faces f JOIN wb_images i USING (image_id)
        JOIN overlap o USING (face_id) JOIN clusters c USING (face_id) JOIN dups d USING (face_id)
        WHERE f.is_primary ORDER BY f.face_id""").fetchall()
    truth = scenario.truth
    names = [r[1] for r in rows]
    positive = np.array([truth[n]["known"] for n in names])
    z = np.array([r[2] for r in rows], np.float64)
    decision = np.array([r[3] for r in rows])
    clusters = np.array([r[5] for r in rows])
    print(f"evaluated faces: {len(rows)} ({positive.sum()} of known identities)")

    # Effective score: a face's own score or its cluster's, whichever is higher (the decision rule).
    effective = np.where(np.isin(decision, ["copy", "overlap"]), np.maximum(z, summary.threshold), z)
    sizes = dict(zip(*np.unique(clusters, return_counts=True), strict=True))
    store = EmbeddingStore.open_existing(ws, con, spec)
    face_ids = [r[0] for r in rows]
    vectors = store.vectors(face_ids)

    # Baseline: cosine to each identity's normalised mean centre (all labeled faces), global threshold.
    samples = con.execute(f"SELECT sample_idx, label FROM labeled_samples WHERE set_name = '{SET}' "
                          "AND status = 'ok' ORDER BY sample_idx").fetchnumpy()
    lab_vecs = store.vectors(registry.get(con, SET).item_ids(samples["sample_idx"]))
    n_ids = int(samples["label"].max()) + 1
    sums = np.zeros((n_ids, lab_vecs.shape[1]))
    np.add.at(sums, samples["label"], lab_vecs)
    centres = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    base_score = (vectors @ centres.T).max(axis=1)

    recalls = (0.95, 0.97, 0.99)
    print("\nprecision at recall (threshold swept):")
    for name, scores in (("baseline: cosine to mean centre", base_score),
                         ("workbench: identity score + neighbours", z),
                         ("workbench: ... + cluster rule (auto)", effective)):
        cells = pr_at_recall(scores, positive, recalls)
        print(f"  {name:<40}" + "  ".join(f"R{r:.2f}: P={p:.3f}" for r, (p, _) in cells.items()))
    flagged = decision != "clean"
    p, r = precision_recall(flagged, positive)
    p_o, r_o = precision_recall(np.isin(decision, ["copy", "overlap"]), positive)
    print(f"\nworkbench auto point (overlap+ambiguous excluded): precision {p:.3f} recall {r:.3f}")
    print(f"workbench auto point (overlap only):               precision {p_o:.3f} recall {r_o:.3f}")
    print(f"clusters: {len(sizes)}, multi-face: {sum(1 for v in sizes.values() if v > 1)}")

    # Dedupe quality.
    groups = np.array([r[6] for r in rows])
    by_name = dict(zip(names, groups, strict=True))
    copies = [(n, t["dup_of"]) for n, t in truth.items()
              if t["dup_of"] and n in by_name and t["dup_of"] in by_name]
    dup_recall = np.mean([by_name[c] == by_name[o] for c, o in copies])
    originals = [n for n in names if truth[n]["dup_of"] is None]
    by_person: dict[str, list[str]] = {}
    for n in originals:
        by_person.setdefault(truth[n]["identity"], []).append(n)
    merged = [n for group in by_person.values() if len(group) > 1 for n in group
              if sum(by_name[m] == by_name[n] for m in group) > 1]
    eligible = sum(len(g) for g in by_person.values() if len(g) > 1)
    print(f"\nnear-duplicate recall: {dup_recall:.3f} ({len(copies)} copies)")
    print(f"distinct photos of one person merged: {len(merged) / max(eligible, 1):.4f} "
          f"({len(merged)} of {eligible})")
    print(f"dedupe: {json.dumps({k: getattr(dedupe, k) for k in ('duplicate_pairs', 'duplicates')})}")
    print(f"dedupe calibration: {json.dumps(dedupe.calibration, default=float)}")
    print(f"report: {summary.report}")


if __name__ == "__main__":
    main()
