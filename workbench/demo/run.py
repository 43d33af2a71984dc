"""`wb demo`: the whole loop on generated faces, scored against the planted truth.

Steps: generate data -> ingest web faces (aligned) and scenes (detected) ->
register the labeled RecordIO -> train a model on S to curate with (as a
team's current model would be) -> overlap, dedupe, split with it -> train the
baseline and the UIR run on the curated splits with the same batches (the
baseline ignores the unlabeled rows, so both see the same labeled faces) ->
eval, score and compare both -> sync to FiftyOne. Sized to finish in a few
minutes on two CPU cores. The result goes to `demo-results.json` and
`demo-results.md` in the workspace (`report.py`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from workbench.browse.sync import run_browse_sync
from workbench.curate.dedupe import run_dedupe
from workbench.curate.overlap import run_overlap
from workbench.curate.splits import run_split
from workbench.demo import report
from workbench.demo.data import DemoSize, write_demo_data
from workbench.evaluate.compare import run_compare
from workbench.evaluate.evaluate import run_eval
from workbench.evaluate.score import run_score
from workbench.ingest.pipeline import run_ingest
from workbench.labeled.register import register_labeled
from workbench.manifest.train_runs import FINAL, checkpoint_dir
from workbench.manifest.workspace import Workspace
from workbench.results import Result
from workbench.train.config import TrainConfig
from workbench.train.run import train_or_reuse

LABELED = "demo-s"


@dataclass
class DemoSettings:
    size: DemoSize = field(default_factory=DemoSize)
    steps: int = 150
    seed: int = 0
    browse: bool = True

    def train_config(self, uir_loss: str, unlabeled_ratio: float = 0.25) -> TrainConfig:
        return TrainConfig(labeled=LABELED, uir_loss=uir_loss, unlabeled_ratio=unlabeled_ratio,
                           backbone="r18", width=0.25, input_size=56, num_features=128, batch_size=64,
                           steps=self.steps, lr=0.1, num_workers=0, seed=self.seed, log_every=10,
                           checkpoint_every=10_000)


def precision_recall(flagged: set[str], truth: set[str]) -> dict[str, float | int]:
    hits = len(flagged & truth)
    return {"planted": len(truth), "flagged": len(flagged), "found": hits,
            "precision": hits / len(flagged) if flagged else 1.0,
            "recall": hits / len(truth) if truth else 1.0}


def curation_scores(manifest: Path, truth: dict[str, Any], data_root: Path) -> dict[str, Any]:
    """Overlap and duplicate detection measured against what the generator planted."""
    con = duckdb.connect(str(manifest), read_only=True)
    try:
        faces = con.execute("""
            SELECT fl.path, f.face_id, o.decision, d.group_id
            FROM wb_faces f JOIN wb_files fl USING (image_id)
            LEFT JOIN wb_overlap o USING (face_id) LEFT JOIN wb_dups d USING (face_id)""").fetchall()
        rejected = dict(con.execute("SELECT path, reason FROM wb_files WHERE status = 'rejected'").fetchall())
        faces_by_source = dict(con.execute("SELECT source, sum(n_faces)::BIGINT FROM wb_images "
                                           "GROUP BY source ORDER BY source").fetchall())
    finally:
        con.close()
    kind = {str(data_root / rel): meta for rel, meta in truth["files"].items()}
    overlap_truth = {p for p, *_ in faces if kind.get(p, {}).get("kind") == "overlap"}
    flagged = {p for p, _, decision, _ in faces if decision in ("copy", "overlap")}
    excluded = {p for p, _, decision, _ in faces if decision in ("copy", "overlap", "ambiguous")}
    group = {p: g for p, _, _, g in faces}
    pairs = {(str(data_root / meta["original"]), p) for p, meta in kind.items() if "original" in meta}
    found_pairs = {(a, b) for a, b in pairs if group.get(a) is not None and group.get(a) == group.get(b)}
    members: dict[str, int] = {}
    for g in group.values():
        if g is not None:
            members[g] = members.get(g, 0) + 1
    linked_pairs = sum(n * (n - 1) // 2 for n in members.values())
    junk = [p for p, meta in kind.items() if meta["kind"] == "junk"]
    scenes = [p for p, meta in kind.items() if meta["kind"] == "scene"]
    return {
        "overlap": precision_recall(flagged, overlap_truth),
        "overlap_or_ambiguous": precision_recall(excluded, overlap_truth),
        "faces_by_source": faces_by_source,
        "near_duplicates": {"planted": len(pairs), "found": len(found_pairs), "linked_pairs": linked_pairs,
                            "precision": len(found_pairs) / linked_pairs if linked_pairs else 1.0,
                            "recall": len(found_pairs) / len(pairs) if pairs else 1.0},
        "junk_rejected": {"planted": len(junk), "rejected": sum(p in rejected for p in junk),
                          "reasons": sorted({rejected[p] for p in junk if p in rejected})},
        "scenes_with_face": {"pictures": len(scenes), "faces_found": sum(p in group for p in scenes)},
    }


@dataclass
class DemoResult(Result):
    """`wb demo`: each step's result and time, the curation measured against the planted truth,
    and the three training runs (the curating model, the baseline, UIR)."""

    workspace: str
    data: str
    seconds: float
    steps: list[dict[str, Any]]
    ingest: dict[str, Any]
    labeled: dict[str, Any]
    overlap: dict[str, Any]
    dedupe: dict[str, Any]
    split: dict[str, Any]
    curation: dict[str, Any]
    runs: dict[str, str]
    comparison: dict[str, Any]
    browse: dict[str, Any] | None


def run_demo(root: Path, settings: DemoSettings | None = None,
             say: Callable[[str], None] = print) -> DemoResult:
    """Run the demo in workspace `root` (its generated files go to `root/demo-data`)."""
    settings = settings or DemoSettings()
    ws = Workspace.at(root)
    data = ws.root / "demo-data"
    started = time.perf_counter()
    steps: list[dict[str, Any]] = []

    def step(name: str, fn: Callable[[], Any]) -> Any:
        """Run one step, timed; its result as plain values (the demo's result is one JSON document)."""
        t0 = time.perf_counter()
        say(f"{name} ...")
        result = fn()
        steps.append({"step": name, "seconds": round(time.perf_counter() - t0, 1)})
        return result.as_dict() if isinstance(result, Result) else result

    if (data / "truth.json").exists():
        truth = json.loads((data / "truth.json").read_text())
    else:
        truth = step("generate faces", lambda: write_demo_data(data, settings.size, settings.seed))
    web = step("ingest webfaces (aligned)",
               lambda: run_ingest(ws, data / "webfaces", source="web", aligned=True))
    scenes = step("ingest scenes (detect + align)",
                  lambda: run_ingest(ws, data / "scenes", source="scenes"))
    labeled = step("labeled add (RecordIO)", lambda: register_labeled(
        ws, LABELED, data / "labeled" / "train.rec", fmt="rec", aligned=True))
    curator = step("train a model to curate with (ArcFace on S)",
                   lambda: train_or_reuse(ws, settings.train_config("none", unlabeled_ratio=0.0)))
    embedder = f"ckpt:{checkpoint_dir(Path(curator['run_dir'])) / FINAL}"
    overlap = step("overlap with S", lambda: run_overlap(ws, LABELED, model=embedder))
    dedupe = step("dedupe", lambda: run_dedupe(ws, model=embedder))
    split = step("split", lambda: run_split(ws, eval_unknown=0.3, seed=settings.seed,
                                            min_quality=0.0))
    baseline = step("train baseline (same batches, unlabeled rows unused)",
                    lambda: train_or_reuse(ws, settings.train_config("none")))
    uir = step("train --uir (same recipe + UIR loss)",
               lambda: train_or_reuse(ws, settings.train_config("reference")))
    runs = [baseline["run_id"], uir["run_id"]]
    for run_id in runs:
        step(f"eval + score {run_id}",
             lambda r=run_id: (run_eval(ws, r), run_score(ws, r, ["train_unlabeled", "eval_unknown"])))
    comparison = step("compare", lambda: run_compare(ws, runs))
    browse = step("sync to FiftyOne", lambda: run_browse_sync(ws)) \
        if settings.browse else None
    curation = curation_scores(ws.manifest_path, truth, data)
    result = DemoResult(
        workspace=str(ws.root), data=str(data), seconds=round(time.perf_counter() - started, 1),
        steps=steps, ingest={"web": web, "scenes": scenes}, labeled=labeled, overlap=overlap,
        dedupe=dedupe, split=split, curation=curation,
        runs={"curation": curator["run_id"], "baseline": baseline["run_id"], "uir": uir["run_id"]},
        comparison=comparison, browse=browse)
    report.write(ws.root, result.as_dict())
    return result
