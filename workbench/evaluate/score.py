"""`wb score RUN`: per-face rejection scores written back to the manifest.

For each face: the max softmax probability over the run's class centres
(what a threshold rejects unknowns by), the predicted identity and the
entropy, plus the run's embedding in the embedding store. Batched; a re-run
or a resumed run scores only the faces not yet scored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa

from workbench.cluster import nodes_used, work_mapper
from workbench.embed.compute import embed_encoded
from workbench.embed.models import ModelSpec
from workbench.embed.store import EmbeddingStore
from workbench.errors import WorkbenchError
from workbench.evaluate.model import TrainedRun
from workbench.manifest.query import registered, transaction
from workbench.manifest.runs import open_run
from workbench.manifest.workspace import Workspace
from workbench.parallel import Mapper, chunked
from workbench.results import Result

BATCH = 512
RAY_TASK_FACES = 64  # faces embedded per Ray task


def faces_of(con: Any, sets: list[str]) -> list[tuple[str, str]]:
    """(face_id, crop_rel) of 'unlabeled' (every ingested face) or of named splits."""
    if "unlabeled" in sets:
        return con.execute("SELECT face_id, crop_rel FROM faces ORDER BY face_id").fetchall()
    known = {r[0] for r in con.execute("SELECT DISTINCT split FROM splits").fetchall()}
    missing = [s for s in sets if s not in known]
    if missing:
        raise WorkbenchError(f"unknown set(s) {', '.join(missing)}: use 'unlabeled' or a split "
                             f"({', '.join(sorted(known)) or 'run `wb split` first'})")
    marks = ", ".join("?" for _ in sets)
    return con.execute(f"SELECT DISTINCT f.face_id, f.crop_rel FROM splits s JOIN faces f USING (face_id) "
                       f"WHERE s.split IN ({marks}) ORDER BY f.face_id", sets).fetchall()


@dataclass
class ScoreResult(Result):
    """`wb score`: faces scored now and before, and the store key of the run's embeddings."""

    run_id: str
    sets: list[str]
    faces: int
    scored_now: int
    already_scored: int
    embedding_model: str
    ray_nodes: dict[str, int] = field(default_factory=dict)  # Ray tasks run per node


def run_score(workspace: Workspace, run_id: str, sets: list[str],
              progress: Callable[[int, int], None] | None = None, ray: str | None = None) -> ScoreResult:
    """Score every face of `sets` not yet scored by the run; `ray`: embed them as Ray tasks on that
    cluster (a GPU per task where it has them), the driver computes the scores and commits."""
    with _embedder(ray) as mapper, \
            open_run(workspace, "score", {"run": run_id, "sets": sets, "ray": ray}) as (con, rec):
        trained = TrainedRun.load(con, run_id)
        spec = ModelSpec("ckpt", str(trained.checkpoint), flip=trained.flip)
        faces = faces_of(con, sets)
        done = {r[0] for r in con.execute("SELECT face_id FROM scores WHERE run_id = ?", [run_id]).fetchall()}
        todo = [(f, c) for f, c in faces if f not in done]
        store = EmbeddingStore(workspace, con, ModelSpec("ckpt", str(trained.checkpoint), flip=True),
                               trained.config.num_features)
        for start in range(0, len(todo), BATCH):
            batch = todo[start : start + BATCH]
            encoded = [(workspace.root / c).read_bytes() for _, c in batch]
            emb = trained.embed_encoded(encoded) if mapper is None else np.concatenate(list(mapper(
                partial(embed_encoded, spec=spec), chunked(encoded, RAY_TASK_FACES))))
            scored = trained.scores(emb)
            msp, pred, entropy = scored.msp, scored.pred, scored.entropy
            ids = [f for f, _ in batch]
            with registered(con, scored=pa.table({
                "face_id": pa.array(ids, pa.string()),
                "max_prob": pa.array(msp.astype(np.float32)),
                "pred_label": pa.array(pred.astype(np.int32)),
                "entropy": pa.array(entropy.astype(np.float32))})), transaction(con):
                missing = store.missing(ids)
                if missing:
                    keep = [ids.index(i) for i in missing]
                    store.append(missing, emb[keep])
                con.execute("INSERT INTO scores (run_id, face_id, max_prob, pred_label, entropy) "
                            "SELECT ?, face_id, max_prob, pred_label, entropy "
                            "FROM scored", [run_id])
            if progress:
                progress(start + len(batch), len(todo))
        result = ScoreResult(run_id=run_id, sets=sets, faces=len(faces), scored_now=len(todo),
                             already_scored=len(faces) - len(todo), embedding_model=store.key,
                             ray_nodes=nodes_used(mapper) if mapper is not None else {})
        rec.counts = result.as_dict()
        return result


@contextmanager
def _embedder(ray: str | None) -> Iterator[Mapper | None]:
    """Ray tasks that embed with the run's checkpoint, or None: embed here, in-process."""
    if ray is None:
        yield None
        return
    with work_mapper(os.cpu_count() or 1, ray, shard_size=1, gpus_per_task=1.0) as mapper:
        yield mapper
