"""Cosine nearest neighbours with FAISS: exact when small, IVF-SQ8 plus exact re-rank when large.

All vectors are unit length, so inner product is cosine similarity. Beyond
`EXACT_LIMIT` multiply-adds, an inverted-file index with 8-bit scalar
quantisation proposes `RERANK_FACTOR * k` candidates per query, whose exact
similarities are then recomputed from the float vectors. An inverted file
loses pairs whose vectors fall in lists it does not probe, more of them the
further apart the pair and the more lists (~4 sqrt(n)): on 582k synthetic
128-d faces, 16 of 3,051 lists found pairs at cosine 0.9 99.55% of the time
either way, at 0.7 95.5%. So a search for close pairs (`close_neighbours`)
is checked on pairs planted at the cosines it must find, and probes more
lists until it loses at most `SEARCH_LOSS` of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import faiss
import numpy as np

from workbench.embed.unit import l2_normalise, unit_rows

EXACT_LIMIT = 5e9  # queries x base vectors below which brute force is fast enough
RERANK_FACTOR = 4
RERANK_FLOATS = 1 << 24  # candidate vector components gathered at once for re-ranking (64 MB)
QUERY_BATCH = 65536
SEARCH_LOSS = 0.001  # share of what exhaustive search finds that an approximate search may lose
PAIR_NPROBES = (16, 32, 64, 128)  # inverted lists a close-pair search may probe, tried in turn
PLANTED_PAIRS = 2000  # pairs planted to check a close-pair search (a loss measured in 0.05% steps)


def nearest(
    queries: np.ndarray, base: np.ndarray, k: int, *, exact: bool | None = None,
    nprobe: int = 16, progress: Callable[[int, int], None] | None = None, cluster: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (similarities, indices) of each query among `base`, best first.

    `exact` forces the choice; by default it is made from the problem size.
    Missing neighbours (k > len(base)) get similarity -inf and index -1.
    `cluster` (a `cluster.RayMapper`): query batches are searched by Ray tasks against `base`,
    put in the object store once; each worker builds its index once and keeps it.
    Either matrix may be float16 (millions of faces held in half the memory): queries are
    upcast a batch at a time, the base as the index takes it in (see `unit_rows`).
    """
    k_eff = min(k, len(base))
    if exact is None:
        exact = float(len(queries)) * len(base) <= EXACT_LIMIT
    sims = np.full((len(queries), k), -np.inf, np.float32)
    idx = np.full((len(queries), k), -1, np.int64)
    if k_eff == 0:
        return sims, idx
    starts = range(0, len(queries), QUERY_BATCH)
    if cluster is not None:
        found = cluster.map_with(partial(_search_batch, k=k_eff, exact=exact, nprobe=nprobe), base,
                                 (unit_rows(queries, slice(start, start + QUERY_BATCH)) for start in starts))
    else:
        index = _flat(base) if exact else _ivf_sq8(base, nprobe)
        found = (_search(index, base, unit_rows(queries, slice(start, start + QUERY_BATCH)), k_eff, exact)
                 for start in starts)
    for start, (s, i) in zip(starts, found, strict=True):
        sims[start : start + len(s), :k_eff] = s
        idx[start : start + len(s), :k_eff] = i
        if progress:
            progress(min(start + QUERY_BATCH, len(queries)), len(queries))
    return sims, idx


def neighbour_pairs(queries: np.ndarray, base: np.ndarray, k: int,
                    floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query row, base row, similarity) of each base row among a query's `k` nearest others at
    similarity >= `floor` (query row n is base row n: itself is left out)."""
    return pairs_of(*nearest(queries, base, min(k + 1, len(base))), floor)


def pairs_of(sims: np.ndarray, idx: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query row, base row, similarity) of a search's neighbours at similarity >= `floor`, each
    query's own row left out (a self-search: query row n is base row n)."""
    rows = np.repeat(np.arange(len(idx)), idx.shape[1])
    cols, s = idx.ravel(), sims.ravel()
    keep = (cols >= 0) & (cols != rows) & (s >= floor)
    return rows[keep], cols[keep], s[keep]


def _search(index: faiss.Index, base: np.ndarray, batch: np.ndarray, k: int,
            exact: bool) -> tuple[np.ndarray, np.ndarray]:
    if exact:
        return index.search(batch, k)
    _, cand = index.search(batch, min(len(base), RERANK_FACTOR * k))
    return _rerank(batch, base, cand, k)


def probe_sweep(queries: np.ndarray, base: np.ndarray, k: int, nprobes: list[int]
                ) -> Iterator[tuple[int, np.ndarray]]:
    """(nprobe, top-k indices) of the approximate search at each of `nprobes` in turn, from one
    inverted file trained and filled once (what `nearest` would find with `exact=False`)."""
    index = _ivf_sq8(base, nprobes[0])
    k_eff = min(k, len(base))
    for nprobe in nprobes:
        index.nprobe = nprobe
        idx = np.full((len(queries), k), -1, np.int64)
        idx[:, :k_eff] = _search_all(index, base, queries, k_eff)[1]
        yield nprobe, idx


@dataclass(frozen=True)
class PairSearch:
    """How a search for close pairs ran: `nprobe` inverted lists (0: exhaustive search), losing
    `lost` of the pairs planted to check it that exhaustive search finds."""

    nprobe: int = 0
    lost: float = 0.0


def planted_pairs(base: np.ndarray, cosines: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(queries, targets): per cosine c, a random row of `base` (its position in `targets`) moved
    in a random direction to exactly cosine c, as a copy whose embedding drifted that far."""
    rng = np.random.default_rng(seed)
    targets = np.sort(rng.choice(len(base), size=len(cosines), replace=len(cosines) > len(base)))
    x = unit_rows(base, targets)
    away = rng.standard_normal(x.shape).astype(np.float32)
    away = l2_normalise(away - (away * x).sum(axis=1, keepdims=True) * x)
    c = np.asarray(cosines, np.float32)[:, None]
    return c * x + np.sqrt(np.maximum(0.0, 1 - c * c)) * away, targets


def close_neighbours(vectors: np.ndarray, k: int, cosines: np.ndarray, *, exact: bool | None = None,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, PairSearch]:
    """Each vector's `k` nearest others and itself (as `nearest(vectors, vectors, k + 1)`), by a
    search that finds pairs at `cosines` (`planted_pairs`): an approximate one probes the fewest
    of `PAIR_NPROBES` lists that lose at most `SEARCH_LOSS` of the planted pairs exhaustive
    search finds (the most, when none does), and says so. A pair counts as found either way, as
    pairs are taken (`pairs_of`): the copy's search finds its original, or the original's search
    would find the copy, had the copy been in the index (its list probed, the copy among its k
    nearest)."""
    k_all = min(k + 1, len(vectors))
    if exact is None:
        exact = float(len(vectors)) * len(vectors) <= EXACT_LIMIT
    if exact or not len(cosines) or k_all < 2:
        return *nearest(vectors, vectors, k_all, exact=exact), PairSearch()
    queries, targets = planted_pairs(vectors, cosines, seed)
    originals = unit_rows(vectors, targets)
    own = (queries * originals).sum(axis=1)
    # exhaustive search pairs them either way: the original among the copy's k nearest, or the
    # copy among its original's k nearest others (the original itself ranks first)
    above = _count_above(np.concatenate([queries, originals]), vectors, np.concatenate([own, own]))
    forward_rank, backward_rank = above[: len(own)] < k_all - 1, above[len(own) :] < k_all
    findable = forward_rank | backward_rank
    index = _ivf_sq8(vectors, PAIR_NPROBES[0])
    home = index.quantizer.search(queries, 1)[1][:, 0]  # the list a copy in the index would be in
    for nprobe in [p for p in PAIR_NPROBES if p < index.nlist] or [index.nlist]:
        index.nprobe = nprobe
        forward = (_search_all(index, vectors, queries, k_all - 1)[1] == targets[:, None]).any(axis=1)
        backward = backward_rank & (index.quantizer.search(originals, nprobe)[1] == home[:, None]).any(axis=1)
        lost = float((findable & ~(forward | backward)).sum() / max(1, findable.sum()))
        if lost <= SEARCH_LOSS:
            break
    return *_search_all(index, vectors, vectors, k_all), PairSearch(nprobe, lost)


def _count_above(queries: np.ndarray, base: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Per query, the rows of `base` clearly more similar to it than `own` (its planted partner's
    cosine): exhaustive search ranks the partner after that many. Counted a block of base rows
    at a time, one pass for all queries: no index holds the whole base as float32 beside it."""
    above = np.zeros(len(queries), np.int64)
    for start in range(0, len(base), QUERY_BATCH // 4):
        block = unit_rows(base, slice(start, start + QUERY_BATCH // 4))
        above += (queries @ block.T > own[:, None] + 1e-5).sum(axis=1)
    return above


def _search_all(index: faiss.Index, base: np.ndarray, queries: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """`_search` (approximate) over all queries, a batch at a time."""
    sims = np.empty((len(queries), k), np.float32)
    idx = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), QUERY_BATCH):
        s, i = _search(index, base, unit_rows(queries, slice(start, start + QUERY_BATCH)), k, exact=False)
        sims[start : start + len(s)], idx[start : start + len(s)] = s, i
    return sims, idx


_WORKER_INDEX: dict[tuple, faiss.Index] = {}


def _search_batch(base: np.ndarray, batch: np.ndarray, k: int, exact: bool,
                  nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """In a Ray task: search one query batch, reusing this worker's index over the same base."""
    key = (base.shape, exact, nprobe, hashlib.blake2b(base[:: max(1, len(base) // 4096)].tobytes(),
                                                      digest_size=16).hexdigest())
    if key not in _WORKER_INDEX:
        _WORKER_INDEX.clear()
        _WORKER_INDEX[key] = _flat(base) if exact else _ivf_sq8(base, nprobe)
    return _search(_WORKER_INDEX[key], base, batch, k, exact)


def _flat(base: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(base.shape[1])
    _add(index, base)
    return index


def _add(index: faiss.Index, base: np.ndarray) -> None:
    """Add the base a block at a time, each upcast to the float32 that FAISS takes."""
    for start in range(0, len(base), QUERY_BATCH):
        index.add(np.ascontiguousarray(unit_rows(base, slice(start, start + QUERY_BATCH))))


def ivf_lists(n: int) -> int:
    """Inverted lists of an index over `n` vectors: ~4 sqrt(n), and 39 training points each."""
    return int(max(1, min(65536, 4 * np.sqrt(n), n // 39)))


def _ivf_sq8(base: np.ndarray, nprobe: int) -> faiss.Index:
    """IVF with `ivf_lists` lists, trained on a sample, 8-bit codes."""
    d = base.shape[1]
    nlist = ivf_lists(len(base))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(base), size=min(len(base), 64 * nlist), replace=False))
    index.train(unit_rows(base, sample))  # the training copy (1.3 GB at 5.8M x 512) is gone before adding
    _add(index, base)
    index.nprobe = nprobe
    return index


def _rerank(queries: np.ndarray, base: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact similarities of the candidates, best k kept; the candidates' vectors are gathered a
    block of rows at a time (a whole batch's gather is 1.2 GB at 128-d, 4.8 GB at 512-d)."""
    sims = np.empty(cand.shape, np.float32)
    rows = max(1, RERANK_FLOATS // max(1, cand.shape[1] * base.shape[1]))
    for start in range(0, len(queries), rows):
        block = cand[start : start + rows]
        sims[start : start + rows] = np.einsum("nd,nkd->nk", queries[start : start + rows],
                                               unit_rows(base, np.where(block < 0, 0, block)))
    sims[cand < 0] = -np.inf
    order = np.argsort(-sims, axis=1)[:, :k]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(cand, order, axis=1)
