"""Near-duplicate groups among unlabeled faces, from the embedding, perceptual hashes and context.

Candidates are each face's nearest neighbours by embedding (FAISS, so it
scales); a pair is a duplicate when the embeddings are nearly identical
(cosine >= `strict`), or close (>= `loose`) and the perceptual hashes (the
aligned crops' or the whole images', the nearer: `pairs.hash_bits`) differ in
at most `phash_bits` bits. Distinct photos of one person are close in
embedding but in neither hash, so they are not merged. Each face's nearest
neighbours by context thumbnail (`faces/context.py`) are candidates too: a
pair whose registered context correlation reaches `context` is a duplicate,
which finds reframed copies of photos too small for the other evidence.
Groups are connected components; the best-quality face represents each.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import cv2
import duckdb
import numpy as np
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from workbench.curate.calibrate import DedupeTargets, dedupe_calibration
from workbench.curate.pairs import DedupeThresholds, Hashes, hash_bits, is_duplicate
from workbench.curate.search import PLANTED_PAIRS, PairSearch, close_neighbours, neighbour_pairs, pairs_of
from workbench.embed.compute import ProgressFn, embed_unlabeled, embedding_run
from workbench.embed.models import ModelSpec
from workbench.faces.context import (
    MIN_COVERED,
    THUMBNAIL_BYTES,
    around_cover,
    context_vectors,
    mirrored,
    row_correlations,
)
from workbench.ingest.hashing import phash64_pair
from workbench.labeled import registry
from workbench.labeled.access import LabeledSet
from workbench.manifest.query import registered, transaction
from workbench.manifest.workspace import Workspace
from workbench.parallel import Mapper, chunked, process_mapper
from workbench.results import Result

CONTEXT_SEARCH = 0.6  # context-vector cosine below which a candidate is not registered at all
CONTEXT_WITH_FACE = 0.5  # the same floor for a face's nearest faces by embedding
CONTEXT_BATCH = 4096  # candidate pairs registered in one task (~4 s), between progress reports
CONTEXT_ROUND = 8  # tasks handed to the workers at once


class ClosePairs(NamedTuple):
    """Pairs i < j with their cosine, and how the search that found them ran."""

    i: np.ndarray
    j: np.ndarray
    cosine: np.ndarray
    search: PairSearch = PairSearch()


def close_pairs(vectors: np.ndarray, k: int, loose: float, plant: np.ndarray | None = None) -> ClosePairs:
    """Each pair i < j where one is among the other's `k` nearest neighbours at cosine >= `loose`:
    the candidates of the duplicate rule. `plant`: cosines the pairs sought may be as far apart
    as (`planted_cosines`); a search large enough to be approximate is checked on pairs planted
    there (`search.close_neighbours`)."""
    empty = np.empty(0, np.int64)
    if len(vectors) < 2:
        return ClosePairs(empty, empty, np.empty(0, np.float32))
    sims, idx, search = close_neighbours(vectors, k, np.empty(0, np.float32) if plant is None else plant)
    rows, cols, s = pairs_of(sims, idx, loose)
    if not len(rows):
        return ClosePairs(rows, cols, s, search)
    pairs, first = np.unique(np.stack([np.minimum(rows, cols), np.maximum(rows, cols)], axis=1), axis=0,
                             return_index=True)
    return ClosePairs(pairs[:, 0], pairs[:, 1], s[first], search)


def planted_cosines(loose: float, copy_cosines: Sequence[float] = ()) -> np.ndarray:
    """Cosines at which a search for duplicates is checked (`search.close_neighbours`): those of
    the calibration's copies that the embedding rule must find (at `loose` or above; below it
    only the context rule finds a copy), resampled to `PLANTED_PAIRS`, or without them the
    rule's band, `loose` to 1, evenly."""
    u = np.linspace(0.0, 1.0, PLANTED_PAIRS)
    drifted = np.sort(np.asarray(copy_cosines, np.float32))
    drifted = drifted[drifted >= loose]
    if len(drifted):
        return np.interp(u, np.linspace(0.0, 1.0, len(drifted)), drifted).astype(np.float32)
    low = float(np.clip(loose, 0.0, 1.0))
    return (low + (1.0 - low) * u).astype(np.float32)


@dataclass(frozen=True)
class FaceHashes:
    """Each face's hashes (`pairs.Hashes`), and its image (faces of one image share a number)."""

    hashes: Hashes
    image_row: np.ndarray

    def bits(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return hash_bits(self.hashes[i], self.hashes[j], self.image_row[i] != self.image_row[j])


def duplicate_pairs(
    hashes: FaceHashes, t: DedupeThresholds, near: ClosePairs
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, similarity) of duplicate pairs among `near` (`close_pairs`)."""
    i, j, cos = near.i, near.j, near.cosine
    dup = is_duplicate(cos, hashes.bits(i, j), t)
    return i[dup], j[dup], cos[dup]


def context_pairs(thumbnails: np.ndarray, t: DedupeThresholds, progress: ProgressFn | None = None,
                  mapper: Mapper | None = None, faces_near: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, registered correlation) of pairs whose context thumbnails (rows; all zero: none)
    make them duplicates, i < j (a pair found both ways may come twice). Candidates are each
    thumbnail's `t.k` nearest by `context_vectors` at cosine >= `CONTEXT_SEARCH` (99.2% of
    celeba10k's reframed copies are among their photo's), as many of its mirror's, which are
    compared mirrored, and the pairs `faces_near` (rows i < j: faces near by embedding) whose
    context vectors reach `CONTEXT_WITH_FACE`: a tiny copy's landmarks can land its thumbnail
    far from its photo's (celeba10k: copies registered to 0.99 at a context cosine of 0.58-0.68,
    the 22nd-141st nearest) while its face stays among the photo's nearest. Only candidates pay
    for a registration (~1 ms a pair on one core), in batches over `mapper`'s processes, two
    rounds of batches in flight (memory stays bounded)."""
    empty = np.empty(0, np.int64)
    rows = np.flatnonzero(around_cover(thumbnails) >= MIN_COVERED)
    if len(rows) < 2:
        return empty, empty, np.empty(0, np.float32)
    vectors = context_vectors(thumbnails[rows])
    i, j, *_ = close_pairs(vectors, t.k, CONTEXT_SEARCH)
    if faces_near is not None:
        fi, fj = _near_faces(vectors, rows, len(thumbnails), *faces_near)
        pairs = np.unique(np.concatenate([np.stack([i, j], 1), np.stack([fi, fj], 1)]), axis=0)
        i, j = pairs[:, 0], pairs[:, 1]
    mi, mj, _ = neighbour_pairs(context_vectors(mirrored(thumbnails[rows])), vectors, t.k, CONTEXT_SEARCH)
    batches = [(a[s : s + CONTEXT_BATCH], b[s : s + CONTEXT_BATCH], mirror)
               for a, b, mirror in ((rows[i], rows[j], False), (rows[mi], rows[mj], True))
               for s in range(0, len(a), CONTEXT_BATCH)]
    mapper = mapper or Mapper()
    total, done, found = len(i) + len(mi), 0, []
    in_flight: deque[tuple[list, Iterable[np.ndarray]]] = deque()

    def drain() -> None:
        nonlocal done
        round_, results = in_flight.popleft()
        for (x, y, _), correlation in zip(round_, results, strict=True):
            dup = correlation >= t.context
            found.append((np.minimum(x, y)[dup], np.maximum(x, y)[dup], correlation[dup]))
            done += len(x)
            if progress:
                progress(done, total)

    for round_ in chunked(batches, CONTEXT_ROUND):
        in_flight.append((round_, mapper(row_correlations, [(thumbnails[x], thumbnails[y], m)
                                                            for x, y, m in round_])))
        if len(in_flight) > 1:
            drain()
    while in_flight:
        drain()
    if not found:
        return empty, empty, np.empty(0, np.float32)
    return tuple(np.concatenate(part) for part in zip(*found, strict=True))  # type: ignore[return-value]


def _near_faces(vectors: np.ndarray, rows: np.ndarray, n: int, i: np.ndarray, j: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The face pairs (i, j) whose thumbnails both count (`rows`, of `n` faces) and reach
    `CONTEXT_WITH_FACE` by their search `vectors` (one per row), as positions in `rows`."""
    at = np.full(n, -1, np.int64)
    at[rows] = np.arange(len(rows))
    fi, fj = at[i], at[j]
    both = (fi >= 0) & (fj >= 0)
    fi, fj = fi[both], fj[both]
    alike = _paired_cosines(vectors, fi, fj) >= CONTEXT_WITH_FACE
    return fi[alike], fj[alike]


def _paired_cosines(vectors: np.ndarray, i: np.ndarray, j: np.ndarray, block: int = 16384) -> np.ndarray:
    """Inner products of rows i[n] and j[n] of unit `vectors`, gathered a block of pairs at a time
    (a million faces' 8 neighbours each, gathered at once: 32 GB of thumbnail vectors)."""
    out = np.empty(len(i), np.float32)
    for start in range(0, len(i), block):
        a, b = (vectors[x[start : start + block]].astype(np.float32) for x in (i, j))
        out[start : start + block] = np.einsum("nd,nd->n", a, b)
    return out


def group_labels(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of the duplicate graph (a scalable union-find)."""
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def representatives(groups: np.ndarray, quality: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    """True for the best-quality face of each group (ties: smallest `order_key`)."""
    order = np.lexsort((order_key, -np.nan_to_num(quality, nan=-1.0), groups))
    first = np.ones(len(order), bool)
    first[1:] = groups[order][1:] != groups[order][:-1]
    rep = np.zeros(len(groups), bool)
    rep[order[first]] = True
    return rep


def crop_phashes_from_file(path: str) -> tuple[int, int]:
    """A stored crop's hash and mirrored hash."""
    gray = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise ValueError(f"unreadable crop {path}")
    return phash64_pair(gray)


@dataclass
class DedupeResult(Result):
    """`wb dedupe`: duplicate pairs and groups, and the thresholds that made them."""

    faces: int
    duplicate_pairs: int
    groups_with_duplicates: int
    duplicates: int
    model_key: str
    strict: float
    loose: float
    phash_bits: int
    k: int
    context: float
    thresholds_mode: str
    calibration: dict[str, Any] | None
    without_context: int  # faces ingested before context thumbnails: embedding and hash evidence only
    run_id: str
    warnings: list[str] = field(default_factory=list)
    search_nprobe: int = 0  # inverted lists the neighbour search probed (0: exhaustive)
    search_lost: float = 0.0  # share of pairs planted at the copies' cosines that it lost


def run_dedupe(
    workspace: Workspace, *, model: str | ModelSpec = "dlib", flip: bool = False,
    thresholds: DedupeThresholds | None = None, labeled_set: str | None = None,
    targets: DedupeTargets | None = None, workers: int | None = None,
    progress: ProgressFn | None = None, ray: str | None = None,
) -> DedupeResult:
    """`wb dedupe`: embed what is missing, group near-duplicates, pick representatives.

    Thresholds: `thresholds` if given, else calibrated for the model on `labeled_set`
    (or the only registered set), else the dlib-measured defaults.
    """
    targets = targets or DedupeTargets()
    params = {"thresholds": asdict(thresholds) if thresholds else None, "labeled": labeled_set,
              "targets": asdict(targets)}
    # registrations get processes of their own, forked before the manifest opens (an ONNX model
    # embeds in this process, on all cores, and leaves the embedding's mapper in-process)
    with process_mapper(workers or os.cpu_count() or 1, chunksize=1) as registrar, \
            embedding_run(workspace, "dedupe", params, model=model, flip=flip,
                          workers=workers, progress=progress, ray=ray) as (ctx, run):
        con = ctx.con
        embed_unlabeled(ctx)
        calibration = None
        name = labeled_set or registry.only_one(con)
        if thresholds is not None:
            mode = "fixed"
        elif name is not None and ctx.spec.kind == "import":
            thresholds, mode = DedupeThresholds(), "defaults (imported vectors: no copies to embed)"
        elif name is not None:
            with LabeledSet(workspace, con, name) as labeled:
                calibration = dedupe_calibration(ctx, labeled, targets, run.run_id)
            thresholds, mode = calibration.thresholds(), f"calibrated on {name}"
        else:
            thresholds, mode = DedupeThresholds(), "defaults (no labeled set to calibrate on)"
        _fill_crop_phash(workspace, con)
        # an image hashed before mirrored hashes existed compares as it is
        rows = con.execute(
            "SELECT f.face_id, f.quality, f.crop_phash, f.crop_phash_mirror, f.context, "
            "coalesce(i.phash, f.crop_phash) AS image, "
            "coalesce(i.phash_mirror, i.phash, f.crop_phash_mirror) AS image_mirror, "
            "dense_rank() OVER (ORDER BY f.image_id) AS image_row "
            "FROM faces f LEFT JOIN images i USING (image_id) ORDER BY f.face_id").fetchnumpy()
        face_ids = list(rows["face_id"])
        store = ctx.store()
        vectors = store.vectors(face_ids) if face_ids else np.empty((0, store.dim), np.float32)
        hashes = FaceHashes(Hashes(*(rows[c].astype(np.uint64) for c in
                                     ("crop_phash", "crop_phash_mirror", "image", "image_mirror"))),
                            rows["image_row"])
        near = close_pairs(vectors, thresholds.k, -1.0, planted_cosines(
            thresholds.loose, calibration.copy_cosines if calibration else ()))
        i, j, _ = duplicate_pairs(hashes, thresholds, near)
        thumbnails = _thumbnails(rows["context"])
        ci, cj, _ = context_pairs(thumbnails, thresholds, progress, registrar, near[:2])
        i, j = np.concatenate([i, ci]), np.concatenate([j, cj])
        i, j = np.unique(np.stack([i, j], axis=1), axis=0).T if len(i) else (i, j)
        groups = group_labels(len(face_ids), i, j)
        rep = representatives(groups, rows["quality"].astype(np.float64), np.arange(len(face_ids)))
        rep_of_group = np.empty(groups.max() + 1 if len(groups) else 0, np.int64)
        rep_of_group[groups[rep]] = np.flatnonzero(rep)
        table = pa.table({
            "face_id": pa.array(face_ids, pa.string()),
            "group_id": pa.array([face_ids[g] for g in rep_of_group[groups]], pa.string()),
            "is_representative": pa.array(rep),
        })
        with registered(con, dup_rows=table), transaction(con):
            con.execute("DELETE FROM dups")
            con.execute("INSERT INTO dups (face_id, group_id, is_representative, run_id) "
                        "SELECT face_id, group_id, is_representative, ? FROM dup_rows",
                        [run.run_id])
        sizes = np.bincount(groups) if len(groups) else np.empty(0, np.int64)
        result = DedupeResult(
            faces=len(face_ids), duplicate_pairs=len(i), groups_with_duplicates=int((sizes >= 2).sum()),
            duplicates=int(len(face_ids) - rep.sum()), model_key=store.key, **asdict(thresholds),
            thresholds_mode=mode, calibration=calibration.as_dict() if calibration else None,
            without_context=int((~thumbnails.any(axis=1)).sum()), run_id=run.run_id,
            search_nprobe=near.search.nprobe, search_lost=round(near.search.lost, 5),
            warnings=[*(calibration.warnings() if calibration else []), *_context_warning(thumbnails)])
        run.counts = result.as_dict()
        return result


def _thumbnails(blobs: np.ndarray) -> np.ndarray:
    """(n, THUMBNAIL_BYTES) uint8 from the manifest's context column (NULL: a row of zeros)."""
    out = np.zeros((len(blobs), THUMBNAIL_BYTES), np.uint8)
    for row, blob in enumerate(blobs):
        if isinstance(blob, bytes | bytearray) and len(blob) == THUMBNAIL_BYTES:  # NULL: masked
            out[row] = np.frombuffer(blob, np.uint8)
    return out


def _context_warning(thumbnails: np.ndarray) -> list[str]:
    missing = int((~thumbnails.any(axis=1)).sum())
    if not missing:
        return []
    return [f"{missing} faces were ingested before context thumbnails existed: reframed copies of "
            "them are found by embedding and hashes only (ingest them into a new workspace to "
            "add the evidence)"]


def _fill_crop_phash(workspace: Workspace, con: duckdb.DuckDBPyConnection) -> None:
    """Workspaces ingested before crop hashes (or mirrored ones) existed get them from the crop files."""
    missing = con.execute("SELECT face_id, crop_rel FROM faces "
                          "WHERE crop_phash IS NULL OR crop_phash_mirror IS NULL").fetchall()
    if not missing:
        return
    hashes = np.array([crop_phashes_from_file(str(workspace.root / rel)) for _, rel in missing],
                      np.uint64).reshape(-1, 2)
    with registered(con, filled=pa.table({"face_id": [f for f, _ in missing],
                                          "crop_phash": pa.array(hashes[:, 0], pa.uint64()),
                                          "crop_phash_mirror": pa.array(hashes[:, 1], pa.uint64())})):
        con.execute("UPDATE faces SET crop_phash = coalesce(faces.crop_phash, filled.crop_phash), "
                    "crop_phash_mirror = filled.crop_phash_mirror FROM filled "
                    "WHERE faces.face_id = filled.face_id")
