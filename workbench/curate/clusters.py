"""Pseudo-identities among unlabeled faces: mutual k-nearest-neighbour graph, connected components.

Requiring each edge to be mutual and above a similarity threshold keeps
single-linkage chaining from merging different people through one outlier.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from workbench.curate.search import nearest


def cluster_labels(vectors: np.ndarray, threshold: float, k: int = 10, cluster: Any = None) -> np.ndarray:
    """A cluster label per vector (0..n_clusters-1); singletons get their own label."""
    n = len(vectors)
    if n == 0:
        return np.empty(0, np.int64)
    sims, idx = nearest(vectors, vectors, min(k + 1, n), cluster=cluster)
    rows = np.repeat(np.arange(n), idx.shape[1])
    cols, s = idx.ravel(), sims.ravel()
    keep = (cols >= 0) & (cols != rows) & (s >= threshold)
    graph = coo_matrix((np.ones(keep.sum(), np.int8), (rows[keep], cols[keep])), shape=(n, n)).tocsr()
    mutual = graph.multiply(graph.T)
    return connected_components(mutual, directed=False)[1]


def cluster_means(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit mean vector of each cluster label."""
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    sums = np.zeros((n_clusters, vectors.shape[1]), np.float64)
    np.add.at(sums, labels, vectors)
    return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)
