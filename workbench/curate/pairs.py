"""When two faces are duplicates: the thresholds and the pair rule `wb dedupe` and calibration share.

A pair is a duplicate when the embeddings are nearly identical (cosine >=
`strict`), or close (>= `loose`) and the aligned crops' perceptual hashes
differ in at most `phash_bits` bits.
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
    (consecutive press shots), so the strict bar sits above that."""

    strict: float = 0.99
    loose: float = 0.90
    phash_bits: int = 6
    k: int = 8


def popcount64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def is_duplicate(cosine: np.ndarray, hash_bits: np.ndarray, t: DedupeThresholds) -> np.ndarray:
    return (cosine >= t.strict) | ((cosine >= t.loose) & (hash_bits <= t.phash_bits))
