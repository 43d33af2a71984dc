"""Evaluation sets to check S against (`--against`): a verification `.bin` or a registered set.

A `.bin` names no identities: its distinct images are grouped into
pseudo-identities by its same-person pairs (connected components), so the
two photos of a genuine pair count as one person. Images are embedded once
and kept in the workspace's embedding store under their content hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from workbench.curate.dedupe import group_labels
from workbench.embed.compute import EmbedContext, embed_items, whole_set_vectors
from workbench.formats.binpairs import read_bin
from workbench.labeled.access import LabeledSet

BIN_PREFIX = "bin:"


@dataclass(frozen=True)
class EvalFaces:
    """An evaluation set's embedded faces and (pseudo-)identities."""

    name: str
    vectors: np.ndarray
    labels: np.ndarray
    identities: list[str]


def _encoded(image: bytes | np.ndarray) -> bytes:
    if isinstance(image, bytes):
        return image
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("undecodable image in the pairs file")
    return png.tobytes()


def bin_faces(ctx: EmbedContext, path: Path) -> EvalFaces:
    """The distinct images of a `.bin`, grouped into people by its genuine pairs."""
    pairs = read_bin(path)
    encoded = [_encoded(image) for image in pairs.images]
    keys = [hashlib.sha256(data).hexdigest()[:32] for data in encoded]
    distinct = sorted(set(keys))
    index = {k: i for i, k in enumerate(distinct)}
    ends = np.array([index[k] for k in keys]).reshape(-1, 2)
    same = ends[pairs.issame]
    labels = group_labels(len(distinct), same[:, 0], same[:, 1])
    data = dict(zip(keys, encoded, strict=True))
    ids = [BIN_PREFIX + k for k in distinct]
    embed_items(ctx, ids, lambda item: data[item.removeprefix(BIN_PREFIX)])
    names = [f"{path.name}#{i}" for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    return EvalFaces(str(path), ctx.store().vectors(ids), labels.astype(np.int64), names)


def set_faces(ctx: EmbedContext, name: str) -> EvalFaces:
    with LabeledSet(ctx.workspace, ctx.con, name) as labeled:
        vectors = whole_set_vectors(ctx, labeled)
        return EvalFaces(name, vectors, labeled.labels.astype(np.int64), labeled.identities)
