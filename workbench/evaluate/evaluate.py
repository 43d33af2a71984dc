"""`wb eval RUN`: verification, open-set rejection, class-centre sparsity, max-probability stats.

- Verification: 10-fold accuracy on flip-averaged embeddings, TAR at FAR 1e-3 and
  1e-4 when there are enough impostor pairs; pairs from an InsightFace `.bin`
  or generated from a registered labeled set.
- Open-set: known probes are the labeled faces the run held out; unknown probes
  the `eval_unknown` split (never trained on). AUROC and FPR at 95% TPR of the
  max softmax probability (MSP), and of the max cosine to any centre and the
  energy score (logsumexp of the logits) and the feature norm before
  normalisation (what Objectosphere trains) beside it; DIR at FPIR 1e-2 and 1e-1
  against the class centres as gallery.
- Sparsity: pairwise cosine distance between class centres (exact below 20k
  classes, sampled with a 95% error bound above).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from workbench.evaluate import metrics as m
from workbench.evaluate.model import TrainedRun
from workbench.evaluate.verify import bin_protocol
from workbench.labeled import registry
from workbench.labeled.access import LabeledSet
from workbench.labeled.pairs import generate_pairs
from workbench.manifest import evaluations
from workbench.manifest.evaluations import Evaluation
from workbench.manifest.runs import open_run
from workbench.manifest.workspace import Workspace
from workbench.results import Result

MSP_SAMPLE = 5000


def _stats(x: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {"n": 0}
    return {"n": len(x), "mean": float(x.mean()), "median": float(np.median(x)),
            "p95": float(np.quantile(x, 0.95))}


def verification(run: TrainedRun, ws: Workspace, con: duckdb.DuckDBPyConnection,
                 pairs_file: Path | None, pairs_from: str | None) -> tuple[dict[str, Any], dict]:
    if pairs_file:
        images, issame, folds = bin_protocol(pairs_file)
        emb = run.embed_encoded(images)
        left, right = emb[0::2], emb[1::2]
        source = str(pairs_file)
    else:
        with LabeledSet(ws, con, pairs_from) as labeled:
            a, b, folds = generate_pairs(labeled.labels, n_folds=10, pairs_per_fold=600, seed=0)
            needed = np.unique(np.r_[a, b])
            emb_of = dict(zip(needed.tolist(), run.embed_encoded([labeled.crop_bytes(int(i))
                                                                    for i in needed]), strict=True))
        left = np.stack([emb_of[int(i)] for i in a])
        right = np.stack([emb_of[int(i)] for i in b])
        issame = labeled.labels[a] == labeled.labels[b]
        source = f"generated from {pairs_from}"
    scores = np.einsum("nd,nd->n", left, right)
    acc, std, threshold = m.verification_accuracy(scores, issame, folds)
    genuine, impostor = scores[issame], scores[~issame]
    return ({"pairs": source, "n_pairs": len(scores), "accuracy": acc, "accuracy_std": std,
             "threshold": threshold, "tar_at_far_1e-3": m.tar_at_far(genuine, impostor, 1e-3),
             "tar_at_far_1e-4": m.tar_at_far(genuine, impostor, 1e-4)},
            {"genuine": genuine, "impostor": impostor})


def _face_crops(ws: Workspace, con: duckdb.DuckDBPyConnection, split: str, limit: int | None = None,
                seed: int = 0) -> list[Path]:
    """The crop files of a split's faces (read later, a batch at a time)."""
    rows = [r[0] for r in con.execute("SELECT f.crop_rel FROM splits s JOIN faces f USING (face_id) "
                                      "WHERE s.split = ? ORDER BY s.face_id", [split]).fetchall()]
    if limit is not None and len(rows) > limit:
        pick = np.random.default_rng(seed).choice(len(rows), size=limit, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    return [ws.root / r for r in rows]


def open_set(run: TrainedRun, ws: Workspace, con: duckdb.DuckDBPyConnection,
             unlabeled_sample: int = MSP_SAMPLE) -> tuple[dict, dict]:
    held = run.snapshot.get("holdout_sample_idx", [])
    with LabeledSet(ws, con, run.config.labeled) as labeled:
        position = {int(s): i for i, s in enumerate(labeled.samples.column("sample_idx").to_numpy())}
        pos = [position[s] for s in held if s in position]
        known, norm_known = run.embed_encoded_with_norms([labeled.crop_bytes(p) for p in pos])
        known_labels = labeled.labels[pos]
    unknown, norm_unknown = run.embed_files_with_norms(_face_crops(ws, con, "eval_unknown"))
    unlabeled = run.embed_files_with_norms(_face_crops(ws, con, run.config.unlabeled_split,
                                                       unlabeled_sample))[0]
    known_scores, unknown_scores = run.scores(known), run.scores(unknown)
    msp_known, msp_unknown = known_scores.msp, unknown_scores.msp
    msp_unlabeled = run.scores(unlabeled).msp
    top_known, top_unknown = known_scores.max_cos, unknown_scores.max_cos
    correct = known_scores.pred == known_labels
    if len(known) == 0 or len(unknown) == 0:
        note = "no held-out known faces" if len(known) == 0 else "empty eval_unknown split"
        return {"note": f"open-set metrics skipped: {note}"}, {}
    return ({
        "known_probes": len(known), "unknown_probes": len(unknown),
        "auroc_msp": m.auroc(msp_known, msp_unknown),
        "fpr_at_95_tpr": m.fpr_at_tpr(msp_known, msp_unknown, 0.95),
        "dir_at_fpir_1e-2": m.open_set_identification(top_known, correct, top_unknown, 1e-2),
        "dir_at_fpir_1e-1": m.open_set_identification(top_known, correct, top_unknown, 1e-1),
        "closed_set_top1": float(correct.mean()),
        # the same rejection by the other scores: a loss can move one and not another
        "auroc_max_cos": m.auroc(top_known, top_unknown),
        "fpr_at_95_tpr_max_cos": m.fpr_at_tpr(top_known, top_unknown, 0.95),
        "auroc_energy": m.auroc(known_scores.energy, unknown_scores.energy),
        "fpr_at_95_tpr_energy": m.fpr_at_tpr(known_scores.energy, unknown_scores.energy, 0.95),
        "auroc_feature_norm": m.auroc(norm_known, norm_unknown),
        "fpr_at_95_tpr_feature_norm": m.fpr_at_tpr(norm_known, norm_unknown, 0.95),
        "msp_known": _stats(msp_known), "msp_eval_unknown": _stats(msp_unknown),
        "msp_unlabeled": _stats(msp_unlabeled),
    }, {"msp_known": msp_known, "msp_unknown": msp_unknown, "msp_unlabeled": msp_unlabeled})


def _eval_key(con: duckdb.DuckDBPyConnection, run: TrainedRun, pairs_file: Path | None,
              pairs_from: str | None, unlabeled_sample: int, flip: bool) -> str:
    """What an evaluation depends on: the checkpoint file, the pairs, the labeled set's
    registration, the faces of the splits it scores, and the options."""
    stat = run.checkpoint.stat()
    pairs = None
    if pairs_file is not None:
        pairs_stat = Path(pairs_file).stat()
        pairs = [str(Path(pairs_file).resolve()), pairs_stat.st_size, pairs_stat.st_mtime_ns]
    found = registry.find(con, pairs_from) if pairs_from else None
    registration = found.id if found else None
    faces = con.execute("SELECT md5(coalesce(string_agg(split || face_id, ',' ORDER BY split, face_id), '')) "
                        "FROM splits WHERE split IN ('eval_unknown', ?)", [run.config.unlabeled_split]
                        ).fetchone()[0]
    text = json.dumps([str(run.checkpoint), stat.st_size, stat.st_mtime_ns, pairs, registration,
                       registry.get(con, run.config.labeled).id if run.config.labeled else None, faces,
                       unlabeled_sample, flip])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class EvalResult(Result):
    """`wb eval`: verification, open-set rejection and class-centre spread (stored in wb_evaluations)."""

    run_id: str
    checkpoint: str
    flip: bool
    verification: dict[str, Any]
    open_set: dict[str, Any]
    centre_distance: dict[str, Any]
    eval_id: str
    eval_key: str = ""  # checkpoint, data and options: an equal key reuses the evaluation
    reused: bool = False


def run_eval(workspace: Workspace, run_id: str, *, pairs_file: Path | None = None,
             pairs_from: str | None = None, unlabeled_sample: int = MSP_SAMPLE,
             flip: bool = True) -> EvalResult:
    """Verification, open-set rejection and centre spread of a run; `unlabeled_sample` training
    faces are scored for the max-probability statistics of the unlabeled split; `flip` averages
    each face's embedding with its mirror image's (2x the work)."""
    with open_run(workspace, "eval", {"run": run_id, "pairs": str(pairs_file) if pairs_file else None,
                                      "pairs_from": pairs_from}) as (con, record):
        trained = TrainedRun.load(con, run_id)
        trained.flip = flip
        pairs_from = pairs_from or (None if pairs_file else trained.config.labeled)
        key = _eval_key(con, trained, pairs_file, pairs_from, unlabeled_sample, flip)
        if (done := evaluations.with_key(con, run_id, key)) is not None:
            stored = {k: v for k, v in done.metrics.items() if k in EvalResult.__dataclass_fields__}
            record.counts = {"eval_id": done.eval_id, "reused": True}
            return EvalResult(**{**stored, "reused": True})
        try:
            verify, v_arrays = verification(trained, workspace, con, pairs_file, pairs_from)
        except ValueError as exc:  # too few identities for 10 disjoint folds
            verify, v_arrays = {"note": f"verification skipped: {exc}"}, {}
        open_set_metrics, o_arrays = open_set(trained, workspace, con, unlabeled_sample)
        distances, bound = m.pairwise_cosine_distances(trained.centres)
        result = EvalResult(
            run_id=run_id, checkpoint=str(trained.checkpoint), flip=flip, verification=verify,
            open_set=open_set_metrics,
            centre_distance={"n_classes": len(trained.centres), "mean": float(distances.mean()),
                             "median": float(np.median(distances)), "min": float(distances.min()),
                             "sampled_mean_error_95": bound},
            eval_id=f"eval-{uuid.uuid4().hex[:10]}", eval_key=key)
        out = trained.run_dir / "eval" / result.eval_id
        out.mkdir(parents=True, exist_ok=True)
        hist, edges = np.histogram(distances, bins=100, range=(0, 2))
        np.savez(out / "arrays.npz", centre_hist=hist, centre_edges=edges, **v_arrays, **o_arrays)
        (out / "metrics.json").write_text(json.dumps(result.as_dict(), indent=2))
        evaluations.insert(con, Evaluation(result.eval_id, run_id, result.as_dict(), out))
        record.counts = {"eval_id": result.eval_id}
        return result
