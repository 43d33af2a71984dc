"""Unit vectors: what every embedder returns (its own module, so that the embedders, which
`embed/models.py` loads lazily, import nothing back from it)."""

from __future__ import annotations

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (an all-zero row stays zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
