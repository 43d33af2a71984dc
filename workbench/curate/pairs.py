"""When two faces are duplicates: the thresholds and the pair rule `wb dedupe` and calibration share.

A pair is a duplicate when the embeddings are nearly identical (cosine >=
`strict`), or close (>= `loose`) and their perceptual hashes differ in at most
`phash_bits` bits: the nearest of the aligned crops' hashes and, for faces of
two different images, the whole images' hashes, each also mirrored. The crop
hash survives crops and reframings of a photo; the image hash survives what
moves the landmarks (a small face rescaled and re-encoded comes back aligned a
pixel or two off, and its crop hash and embedding with it, while the whole
photo hashes the same); the mirrored hashes, a copy flipped left to right.
Besides, a pair is a duplicate when their context thumbnails (the photo around
each face in the face's frame, `faces.context`) correlate >= `context` once
registered: the one evidence that survives a reframed copy of a small photo,
whose embedding, crop hash and image hash all drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DedupeThresholds:
    """Fallback when there is no labeled set to calibrate on (`wb calibrate` measures them per
    model). Measured on the lfw150 scenario with dlib (benchmarks/overlap_lfw.py): copies
    (resized, recompressed, cropped, brightened) have cosine >= 0.983 for 99% and crop hashes
    within 2 bits for half; 0.5% of distinct photos of one person reach cosine 0.989
    (consecutive press shots), so the strict bar sits above that. `context`: measured on
    celeba10k with YuNet-s (`faces/context.py`), 0.965 finds 98.5% of reframed copies while
    0.13% of photos reach it with one of their 8 nearest other photos."""

    strict: float = 0.99
    loose: float = 0.90
    phash_bits: int = 6
    k: int = 8
    context: float = 0.965


def popcount64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


@dataclass(frozen=True)
class Hashes:
    """Per face, 64-bit pHashes: its aligned crop's and its whole image's, each also of the image
    mirrored left to right (`ingest.hashing.phash64_pair`), so that a mirrored copy is near."""

    crop: np.ndarray
    crop_mirror: np.ndarray
    image: np.ndarray
    image_mirror: np.ndarray

    def __getitem__(self, rows: np.ndarray) -> Hashes:
        return Hashes(self.crop[rows], self.crop_mirror[rows], self.image[rows], self.image_mirror[rows])


def hash_bits(a: Hashes, b: Hashes, images_differ: np.ndarray | bool = True) -> np.ndarray:
    """Bits between pairs of faces' hashes: the nearest of their crops' (as they are, or one
    mirrored) and, where `images_differ`, their images'. Faces of one image share its hash,
    which then says nothing about them."""
    crop = np.minimum(_bits(a.crop, b.crop), _bits(a.crop, b.crop_mirror))
    image = np.minimum(_bits(a.image, b.image), _bits(a.image, b.image_mirror))
    return np.where(images_differ, np.minimum(crop, image), crop)


def _bits(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return popcount64(x.astype(np.uint64) ^ y.astype(np.uint64))


def is_duplicate(cosine: np.ndarray, hash_bits: np.ndarray, t: DedupeThresholds,
                 context: np.ndarray | None = None) -> np.ndarray:
    """The pair rule; `context`: the pairs' registered context correlations (NaN: not measured)."""
    found = (cosine >= t.strict) | ((cosine >= t.loose) & (hash_bits <= t.phash_bits))
    return found if context is None else found | (np.nan_to_num(context, nan=-1.0) >= t.context)
