"""Compute what is missing: embeddings of unlabeled faces, of sampled labeled faces, centres.

Every function here is idempotent: it embeds only items without a stored
vector, commits in batches, and resumes after a crash.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from workbench.cluster import nodes_used, work_mapper
from workbench.embed.models import ModelSpec, load_embedder
from workbench.embed.store import EmbeddingStore, centres_path
from workbench.embed.transfer import resolve as resolve_imported
from workbench.errors import WorkbenchError
from workbench.formats.images import decode_crops
from workbench.labeled.access import LabeledSet
from workbench.manifest.query import one, transaction
from workbench.manifest.runs import Run, open_run
from workbench.manifest.workspace import Workspace
from workbench.parallel import Mapper, chunked
from workbench.results import Result

ProgressFn = Callable[[int, int], None]
COMMIT_EVERY = 512
WORKER_BATCH = 8
RAY_SHARD_BATCHES = 8  # worker batches per Ray task: 64 crops
HALF_FROM_BYTES = 1 << 30  # a whole set's float32 vectors above which they are held as float16


def embed_encoded(encoded: list[bytes], spec: ModelSpec) -> np.ndarray:
    """Embeddings of encoded crops, in a worker (process pool or Ray task)."""
    return load_embedder(spec).embed(decode_crops(encoded))


@dataclass
class EmbedContext:
    workspace: Workspace
    con: duckdb.DuckDBPyConnection
    spec: ModelSpec
    mapper: Mapper
    progress: ProgressFn | None = None

    def store(self) -> EmbeddingStore:
        existing = EmbeddingStore.open_existing(self.workspace, self.con, self.spec)
        if existing is not None:
            return existing
        if self.spec.kind == "import":
            raise WorkbenchError(f"no vectors are stored under {self.spec.key}")
        return EmbeddingStore(self.workspace, self.con, self.spec, load_embedder(self.spec).dim)


def embed_items(ctx: EmbedContext, item_ids: list[str], load: Callable[[str], bytes]) -> int:
    """Embed the items without a vector; returns how many were computed."""
    store = ctx.store()
    todo = store.missing(item_ids)
    if todo and ctx.spec.kind == "import":
        raise WorkbenchError(f"{len(todo):,} faces have no vector under the imported model {store.key} "
                             f"(e.g. {todo[0]}): import vectors for them too, or use a model that computes")
    work = partial(embed_encoded, spec=ctx.spec)
    done = 0
    for chunk in chunked(todo, COMMIT_EVERY):
        batches = [[load(i) for i in part] for part in chunked(chunk, WORKER_BATCH)]
        vectors = np.concatenate(list(_mapped(ctx, work, batches)))
        with transaction(ctx.con):
            store.append(chunk, vectors)
        done += len(chunk)
        if ctx.progress:
            ctx.progress(done, len(todo))
    return done


def _mapped(ctx: EmbedContext, work: Callable, batches: list[list[bytes]]) -> Iterable[np.ndarray]:
    if ctx.spec.parallel or ctx.mapper.distributed:
        return ctx.mapper(work, batches)
    return map(work, batches)


def unlabeled_face_ids(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(face_id, crop_rel) of every unlabeled face, in a stable order."""
    return con.execute("SELECT face_id, crop_rel FROM faces ORDER BY face_id").fetchall()


def embed_unlabeled(ctx: EmbedContext) -> int:
    faces = unlabeled_face_ids(ctx.con)
    crops = dict(faces)
    root = ctx.workspace.root
    return embed_items(ctx, [f for f, _ in faces], lambda face_id: (root / crops[face_id]).read_bytes())


def sample_per_identity(labels: np.ndarray, per_identity: int, seed: int) -> np.ndarray:
    """Positions of up to `per_identity` samples of each label, chosen at random (seeded)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.arange(len(order)) - starts
    return np.sort(order[rank < per_identity])


@dataclass(frozen=True)
class Centres:
    vectors: np.ndarray  # (n_identities, dim), unit rows; zero rows for identities without samples
    valid: np.ndarray  # (n_identities,) bool
    sample_positions: np.ndarray  # positions in LabeledSet.samples used for the centres


def unit_centres(vectors: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit mean vector of each label (zero rows for labels without vectors), and which exist."""
    sums = np.zeros((n, vectors.shape[1]), np.float64)
    np.add.at(sums, labels, vectors)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32), norms[:, 0] > 0


def embed_labeled(ctx: EmbedContext, labeled: LabeledSet, positions: np.ndarray) -> list[str]:
    """Embed the labeled samples at `positions` that have no vector yet; their item ids."""
    ids = labeled.item_ids(positions)
    by_id = dict(zip(ids, positions.tolist(), strict=True))
    embed_items(ctx, ids, lambda item: labeled.crop_bytes(by_id[item]))
    return ids


def labeled_vectors(ctx: EmbedContext, labeled: LabeledSet, positions: np.ndarray,
                    dtype: type = np.float32) -> np.ndarray:
    """Embeddings of the labeled samples at `positions` as `dtype`, computing the missing ones."""
    return ctx.store().vectors(embed_labeled(ctx, labeled, positions), dtype)


def whole_set_vectors(ctx: EmbedContext, labeled: LabeledSet) -> np.ndarray:
    """Every sample's vector, as the audit and the calibration hold a whole set: float16 when the
    float32 matrix would pass `HALF_FROM_BYTES` (MS1MV2 is 3 GB at 128-d, 12 GB at 512-d), to be
    read with `unit.unit_rows`, which upcasts a gather at a time (cosines within ~1e-3)."""
    n = len(labeled)
    dtype = np.float16 if n * ctx.store().dim * 4 > HALF_FROM_BYTES else np.float32
    return labeled_vectors(ctx, labeled, np.arange(n), dtype)


def ensure_centres(ctx: EmbedContext, set_name: str, per_identity: int, seed: int) -> Centres:
    """Embed sampled faces of each labeled identity and average them into unit centres (kept per
    registration of the set, so a set registered again under the same name never reuses them)."""
    with LabeledSet(ctx.workspace, ctx.con, set_name) as labeled:
        positions = sample_per_identity(labeled.labels, per_identity, seed)
        ids = embed_labeled(ctx, labeled, positions)
    registration = labeled.registration.id
    store = ctx.store()
    path = centres_path(store, registration, per_identity, seed)
    recorded = one(ctx.con, "SELECT path FROM centres WHERE model_key = ? AND registration = ? "
                   "AND per_identity = ? AND seed = ?", [store.key, registration, per_identity, seed])
    n_ids = len(labeled.identities)
    if recorded is None or not Path(recorded[0]).exists():
        centres, _ = unit_centres(store.vectors(ids), labeled.labels[positions], n_ids)
        np.save(path, centres)
        ctx.con.execute("INSERT OR REPLACE INTO centres (model_key, set_name, per_identity, seed, path, "
                        "n_identities, created_at, registration) "
                        "VALUES (?, ?, ?, ?, ?, ?, now(), ?)",
                        [store.key, set_name, per_identity, seed, str(path), n_ids, registration])
        recorded = (str(path),)
    centres = np.load(recorded[0])
    return Centres(centres, np.linalg.norm(centres, axis=1) > 0, positions)


@contextmanager
def embedding_run(
    workspace: Workspace, command: str, params: dict[str, object], *, model: str | ModelSpec,
    flip: bool, workers: int | None, progress: ProgressFn | None, ray: str | None = None,
) -> Iterator[tuple[EmbedContext, Run]]:
    """Worker processes (forked before the manifest opens) or Ray tasks (`ray`: a cluster
    address; one GPU per task where the cluster has them), the locked manifest and a run record.

    `model` is a spec, or its text (`dlib`, `onnx:PATH`, ...) with `flip`.
    """
    spec = model if isinstance(model, ModelSpec) else ModelSpec.parse(model, flip=flip)
    spec = resolve_imported(workspace, spec)
    workers = workers or os.cpu_count() or 1
    recorded = {"model": model if isinstance(model, str) else f"{spec.kind}:{spec.path}",
                "flip": spec.flip, "model_key": spec.key, "ray": ray}
    with work_mapper(workers if spec.parallel else 1, ray, chunksize=1, shard_size=RAY_SHARD_BATCHES,
                     gpus_per_task=1.0) as mapper, \
            open_run(workspace, command, {**recorded, **params}) as (con, run):
        yield EmbedContext(workspace, con, spec, mapper, progress), run
        if nodes_used(mapper):
            run.counts = {**(run.counts or {}), "ray_nodes": nodes_used(mapper)}


@dataclass
class EmbedResult(Result):
    """`wb embed`: unlabeled faces embedded now; per labeled set, identities with a centre and
    the sampled faces behind them."""

    model_key: str
    unlabeled_computed: int | None = None
    identities: dict[str, int] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        flat: dict[str, Any] = {"model_key": self.model_key}
        if self.unlabeled_computed is not None:
            flat["unlabeled_computed"] = self.unlabeled_computed
        for name in self.identities:
            flat |= {f"{name}_identities": self.identities[name], f"{name}_samples": self.samples[name]}
        return flat


def run_embed(
    workspace: Workspace,
    *,
    model: str | ModelSpec = "dlib",
    flip: bool = False,
    sets: list[str] | None = None,
    per_identity: int = 10,
    seed: int = 0,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    ray: str | None = None,
) -> EmbedResult:
    """`wb embed`: embed unlabeled faces (`unlabeled`) and/or labeled sets' sampled faces."""
    sets = sets or ["unlabeled"]
    params = {"sets": sets, "per_identity": per_identity, "seed": seed}
    with embedding_run(workspace, "embed", params, model=model, flip=flip, workers=workers,
                       progress=progress, ray=ray) as (ctx, run):
        result = EmbedResult(ctx.spec.key)
        for name in sets:
            if name == "unlabeled":
                result.unlabeled_computed = embed_unlabeled(ctx)
            else:
                centres = ensure_centres(ctx, name, per_identity, seed)
                result.identities[name] = int(centres.valid.sum())
                result.samples[name] = len(centres.sample_positions)
        run.counts = result.as_dict()
        return result
