"""`wb calibrate`: measure overlap and dedupe thresholds for a model on a labeled set, and keep them.

A calibration is stored in the manifest (`calibrations`, view
`wb_calibrations`) under its kind, model, labeled set (as registered) and
settings; `wb overlap` and `wb dedupe` reuse it, or compute it when missing.
The maths is in `calibration.py`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import cv2
import numpy as np

from workbench.curate.calibration import (
    MAX_PROBES,
    MAX_UNKNOWN,
    DedupeCalibration,
    OverlapCalibration,
    PairEvidence,
    calibrate_dedupe,
    calibrate_overlap,
    choose_probes,
    choose_unknown,
    open_set_scores,
    single_face_scores,
)
from workbench.curate.pairs import Hashes
from workbench.curate.search import neighbour_pairs
from workbench.embed.compute import (
    EmbedContext,
    ProgressFn,
    embedding_run,
    labeled_vectors,
    sample_per_identity,
    whole_set_vectors,
)
from workbench.embed.models import ModelSpec, embed_crops
from workbench.embed.unit import unit_rows
from workbench.errors import WorkbenchError
from workbench.faces.context import (
    THUMBNAIL_BYTES,
    aligned_context,
    best_correlations,
    context_thumbnail,
    context_vectors,
    pair_correlations,
)
from workbench.faces.copies import TRANSFORMS, copy_pair
from workbench.faces.detect import Detection
from workbench.faces.detectors import get_detector
from workbench.formats.images import decode_crop, decode_crops
from workbench.ingest.decode import Rejected, decode_image
from workbench.ingest.hashing import phash64_pair
from workbench.labeled import registry
from workbench.labeled.access import LabeledSet
from workbench.manifest.detector import of_workspace as workspace_detector
from workbench.manifest.query import one
from workbench.manifest.workspace import Workspace
from workbench.results import Result

T = TypeVar("T")
DISTINCT_PAIRS = 20_000  # distinct photos sampled for the merge rate: its tail decides the rule
CONTEXT_PAIRS = 2_000  # of them, pairs whose photos are re-detected to measure the context rule
OTHER_CONTEXTS = 4  # nearest contexts of other people registered per face (a registration each)
METHOD = 9  # bump when the way a calibration is measured changes: stored ones are then redone


@dataclass(frozen=True)
class OverlapTargets:
    fpir: float = 0.01  # share of unknown faces the user accepts losing as 'overlap'
    ambiguous_fpir: float = 0.02  # looser: faces between the two thresholds are 'ambiguous'
    copy_fpir: float = 0.001  # share of unknown faces taken for copies of a labeled photo
    copies: bool = True  # also search every labeled face for copies of labeled photos
    per_identity: int = 10
    max_probes: int = MAX_PROBES
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("fpir", "ambiguous_fpir", "copy_fpir"):
            if not 0 < getattr(self, name) < 1:
                raise WorkbenchError(f"--{name.replace('_', '-')} must be between 0 and 1")


@dataclass(frozen=True)
class DedupeTargets:
    recall: float = 0.99  # share of web copies to find
    merge_rate: float = 0.005  # share of distinct photos of one person that may be merged
    copies: int = 800  # synthetic copies made, in turn of each transformation
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.recall < 1 and 0 < self.merge_rate < 1):
            raise WorkbenchError("dedupe recall and merge rate must be between 0 and 1")


def _calibration_id(kind: str, model_key: str, labeled: LabeledSet, registration: str,
                    settings: dict[str, Any]) -> str:
    text = json.dumps([METHOD, kind, model_key, labeled.name, registration, settings], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stored(ctx: EmbedContext, kind: str, labeled: LabeledSet, settings: dict[str, Any],
            fresh: bool, run_id: str, compute: Any) -> dict[str, Any]:
    """The stored result for these inputs, or `compute()` stored now."""
    store = ctx.store()
    registration = labeled.registration.id
    cal_id = _calibration_id(kind, store.key, labeled, registration, settings)
    if not fresh:
        row = one(ctx.con, "SELECT result FROM calibrations WHERE calibration_id = ?", [cal_id])
        if row is not None:
            return {**json.loads(row[0]), "calibration_id": cal_id, "reused": True}
    result = compute()
    ctx.con.execute("INSERT OR REPLACE INTO calibrations (calibration_id, kind, model_key, labeled_set, "
                    "settings, result, created_at, run_id, registration) "
                    "VALUES (?, ?, ?, ?, ?, ?, now(), ?, ?)",
                    [cal_id, kind, store.key, labeled.name, json.dumps(settings),
                     json.dumps(result, default=float), run_id, registration])
    return {**result, "calibration_id": cal_id, "reused": False}


def _from_stored(cls: type[T], result: dict[str, Any]) -> T:
    """A calibration dataclass from its stored JSON (intervals come back as lists)."""
    fields = {k: v for k, v in result.items() if k in cls.__dataclass_fields__}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def overlap_calibration(ctx: EmbedContext, labeled: LabeledSet, targets: OverlapTargets, run_id: str,
                        fresh: bool = False) -> OverlapCalibration:
    if len(np.unique(labeled.labels)) < 3:
        raise WorkbenchError(f"{labeled.name}: calibration needs at least three identities with faces")

    def compute() -> dict[str, Any]:
        positions = sample_per_identity(labeled.labels, targets.per_identity, targets.seed)
        vectors, labels = labeled_vectors(ctx, labeled, positions), labeled.labels[positions]
        known = choose_probes(labels, targets.max_probes, targets.seed)
        if known.sum() < 2:
            raise WorkbenchError(f"{labeled.name}: calibration needs identities with two or more faces")
        unknown = choose_unknown(len(labels), MAX_UNKNOWN, targets.seed)
        n_ids = len(labeled.identities)
        scores = open_set_scores(vectors, labels, n_ids, unknown, known)
        copy_impostors = same_person = None
        if targets.copies:
            everything = whole_set_vectors(ctx, labeled)
            copy_impostors, same_person, _ = single_face_scores(
                vectors[unknown], labels[unknown], positions[unknown], everything, labeled.labels)
        return calibrate_overlap(scores, n_ids, targets.fpir, targets.ambiguous_fpir, targets.copy_fpir,
                                 copy_impostors, same_person).as_dict()

    return _from_stored(OverlapCalibration,
                        _stored(ctx, "overlap", labeled, asdict(targets), fresh, run_id, compute))


def _crops(labeled: LabeledSet, positions: np.ndarray) -> np.ndarray:
    return decode_crops([labeled.crop_bytes(int(p)) for p in positions])


def _photo(labeled: LabeledSet, position: int) -> np.ndarray | None:
    """The photo a labeled face was found in, decoded; None where it is gone or unreadable."""
    try:
        return decode_image(labeled.photo_bytes(position)).rgb
    except (OSError, ValueError, Rejected):
        return None


def _crop_hashes(crops: np.ndarray, photos: np.ndarray) -> Hashes:
    """`crops`' hashes and mirrored hashes, beside their photos' (n x 2: hash, mirrored hash)."""
    own = np.array([phash64_pair(c) for c in crops], np.uint64).reshape(-1, 2)
    return Hashes(own[:, 0], own[:, 1], photos[:, 0], photos[:, 1])


def _labeled_evidence(labeled: LabeledSet, positions: np.ndarray,
                      detect: Callable[[np.ndarray], list[Detection]],
                      with_context: np.ndarray) -> tuple[Hashes, np.ndarray]:
    """Hashes of labeled faces' crops and of the photos they were found in, as `wb ingest` hashes
    web faces and their images (the crop's own where the photo is gone), and where `with_context`
    the context thumbnail of the photo's primary face as the workspace's detector finds it (the
    crop's own where there is no photo or no face); read one at a time (20k crops at once would
    hold 750 MB)."""
    crops, photos = np.empty((len(positions), 2), np.uint64), np.empty((len(positions), 2), np.uint64)
    contexts = np.zeros((len(positions), THUMBNAIL_BYTES), np.uint8)
    for row, position in enumerate(positions.tolist()):
        crop = decode_crop(labeled.crop_bytes(position))
        crops[row] = phash64_pair(crop)
        photo = _photo(labeled, position)
        photos[row] = crops[row] if photo is None else phash64_pair(photo)
        if with_context[row]:
            found = detect(photo) if photo is not None else []
            contexts[row] = context_thumbnail(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY), found[0].landmarks) \
                if found else aligned_context(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY))
    return Hashes(crops[:, 0], crops[:, 1], photos[:, 0], photos[:, 1]), contexts


def _other_person_context(contexts: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Each face's best registered context correlation with its `k` nearest contexts of another
    person (-1 where none is near); as they are, not mirrored (a mirror seldom makes one
    person's surroundings another's, and this costs a registration a pair)."""
    vectors = context_vectors(contexts)
    rows, cols, _ = neighbour_pairs(vectors, vectors, k, -np.inf)
    other = labels[cols] != labels[rows]
    best = np.full(len(contexts), -1.0, np.float32)
    np.maximum.at(best, rows[other], pair_correlations(contexts, rows[other], cols[other]))
    return best


def dedupe_calibration(ctx: EmbedContext, labeled: LabeledSet, targets: DedupeTargets, run_id: str,
                       fresh: bool = False) -> DedupeCalibration:
    """Copies made as the web makes them (`faces/copies.py`), re-found by the workspace's own
    detector, against each sampled face's most similar other photo of the same person."""
    if ctx.spec.kind == "import":
        raise WorkbenchError("imported vectors cannot embed synthetic copies of S's faces to calibrate "
                             "the duplicate rule")
    detector = workspace_detector(ctx.con)

    def compute() -> dict[str, Any]:
        rng = np.random.default_rng(targets.seed)
        n = len(labeled)
        originals = np.sort(rng.choice(n, size=min(targets.copies, n), replace=False))
        detect = get_detector(detector).detect
        names = [TRANSFORMS[i % len(TRANSFORMS)] for i in range(len(originals))]
        before, after, photos, contexts, refound = [], [], [], [], 0
        for position, crop, name in zip(originals, _crops(labeled, originals), names, strict=True):
            photo = None if labeled.aligned else _photo(labeled, int(position))
            pair = copy_pair(crop, name, rng, detect, photo)  # its photos are hashed, not kept
            before.append(pair.original)
            after.append(pair.copy)
            photos.append([phash64_pair(image) for image in pair.photos])
            contexts.append(pair.contexts)
            refound += pair.refound
        hashes = np.array(photos, np.uint64).reshape(-1, 2, 2)  # copy, (photo, copy's photo), (plain, mirror)
        crops_before, crops_after = np.stack(before), np.stack(after)
        thumbnails = np.array(contexts, np.uint8).reshape(-1, THUMBNAIL_BYTES)  # original, copy, ...
        pairs = np.arange(0, len(thumbnails), 2)
        copies = PairEvidence.of(embed_crops(ctx.spec, crops_before), embed_crops(ctx.spec, crops_after),
                                 _crop_hashes(crops_before, hashes[:, 0]),
                                 _crop_hashes(crops_after, hashes[:, 1]),
                                 best_correlations(thumbnails, pairs, pairs + 1))
        everything = whole_set_vectors(ctx, labeled)
        a = _with_others(labeled.labels, DISTINCT_PAIRS, rng)
        faces = unit_rows(everything, a)
        other_person, _, b = single_face_scores(faces, labeled.labels[a], a, everything, labeled.labels)
        paired = b >= 0
        a, b, faces = a[paired], b[paired], faces[paired]
        if len(a) == 0:
            raise WorkbenchError(f"{labeled.name}: dedupe calibration needs identities with two faces")
        measured = np.zeros(len(a), bool)  # pairs whose photos are re-detected for their context
        measured[rng.choice(len(a), size=min(CONTEXT_PAIRS, len(a)), replace=False)] = True
        involved = np.unique(np.concatenate([a, b]))  # faces of several pairs are read once
        in_context = np.isin(involved, np.concatenate([a[measured], b[measured]]))
        hashes, seen = _labeled_evidence(labeled, involved, detect, in_context)
        at_a, at_b = np.searchsorted(involved, a), np.searchsorted(involved, b)
        context = np.full(len(a), np.nan, np.float32)
        context[measured] = best_correlations(seen, at_a[measured], at_b[measured])
        distinct = PairEvidence.of(faces, unit_rows(everything, b), hashes[at_a], hashes[at_b], context)
        other_context = _other_person_context(seen[in_context], labeled.labels[involved[in_context]],
                                              OTHER_CONTEXTS)
        result = calibrate_dedupe(copies, distinct, targets.recall, targets.merge_rate, np.array(names),
                                  other_person, other_context)
        return {**result.as_dict(), "detector": detector.key,
                "copies_not_refound": len(names) - refound}

    return _from_stored(DedupeCalibration, _stored(ctx, "dedupe", labeled,
                                                   {**asdict(targets), "detector": detector.key},
                                                   fresh, run_id, compute))


def _with_others(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `n` random positions whose identity has another face."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    eligible = np.flatnonzero(counts[inverse] >= 2)
    return np.sort(rng.choice(eligible, size=min(n, len(eligible)), replace=False))


def _dedupe_or_note(ctx: EmbedContext, labeled: LabeledSet, targets: DedupeTargets, run_id: str,
                    fresh: bool) -> dict[str, Any]:
    try:
        return dedupe_calibration(ctx, labeled, targets, run_id, fresh).as_dict()
    except WorkbenchError as exc:
        return {"note": f"not calibrated: {exc}"}


@dataclass
class CalibrateResult(Result):
    """`wb calibrate`: both calibrations with their measured error rates."""

    labeled_set: str
    model_key: str
    overlap: dict[str, Any]
    dedupe: dict[str, Any]
    run_id: str


def run_calibrate(workspace: Workspace, labeled_set: str | None, *, model: str | ModelSpec = "dlib",
                  flip: bool = False, overlap: OverlapTargets | None = None,
                  dedupe: DedupeTargets | None = None, fresh: bool = False, workers: int | None = None,
                  progress: ProgressFn | None = None, ray: str | None = None) -> CalibrateResult:
    """`wb calibrate`: measure the overlap and dedupe thresholds of a model on a labeled set.

    Calibrations are stored per (model, registration, settings) and reused unless `fresh`.
    Returns `CalibrateResult`; raises `WorkbenchError` when the set has too few identities."""
    overlap, dedupe = overlap or OverlapTargets(), dedupe or DedupeTargets()
    params = {"labeled": labeled_set, "overlap": asdict(overlap), "dedupe": asdict(dedupe), "fresh": fresh}
    with embedding_run(workspace, "calibrate", params, model=model, flip=flip, workers=workers,
                       progress=progress, ray=ray) as (ctx, run):
        name = labeled_set or registry.only_one(ctx.con)
        if name is None:
            raise WorkbenchError("name the labeled set to calibrate on: --labeled NAME")
        with LabeledSet(workspace, ctx.con, name) as labeled:
            result = CalibrateResult(
                labeled_set=name, model_key=ctx.store().key,
                overlap=overlap_calibration(ctx, labeled, overlap, run.run_id, fresh).as_dict(),
                dedupe=_dedupe_or_note(ctx, labeled, dedupe, run.run_id, fresh),
                run_id=run.run_id)
        run.counts = result.as_dict()
        return result
