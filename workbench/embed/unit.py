"""Unit vectors: what every embedder returns (its own module, so that the embedders, which
`embed/models.py` loads lazily, import nothing back from it)."""

from __future__ import annotations

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Vectors along the last axis scaled to unit length, float32 (an all-zero one stays zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def unit_rows(vectors: np.ndarray, index: np.ndarray | slice) -> np.ndarray:
    """`vectors[index]` as float32 unit rows. A float16 matrix (how millions of faces are held
    in memory: half the bytes) is upcast a gather at a time and renormalised, so that two
    identical rows still score cosine 1 to float32 precision."""
    rows = vectors[index]
    if rows.dtype == np.float16:
        return l2_normalise(rows.astype(np.float32))
    return np.ascontiguousarray(rows, dtype=np.float32)
