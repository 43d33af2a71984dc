"""LFW-style verification pairs from a labeled set: folds with disjoint identities, half same."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from workbench.errors import WorkbenchError
from workbench.formats.binpairs import write_bin
from workbench.labeled.access import LabeledSet
from workbench.manifest.workspace import Workspace
from workbench.results import Result


def generate_pairs(
    labels: np.ndarray, *, n_folds: int = 10, pairs_per_fold: int = 600, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LFW-style pairs over sample indices: folds with disjoint identities, half same, half different.

    Returns (left, right, fold) arrays of sample indices and fold ids, and issame
    is `labels[left] == labels[right]`. Folds hold up to `pairs_per_fold` pairs;
    fewer when a fold's identities cannot supply them.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    identities = rng.permutation(np.unique(labels))
    if len(identities) < 2 * n_folds:
        raise ValueError(f"need at least {2 * n_folds} identities for {n_folds} folds")
    by_identity = {int(i): np.flatnonzero(labels == i) for i in identities}
    left, right, fold = [], [], []
    for f in range(n_folds):
        members = [int(i) for i in identities[f::n_folds]]
        multi = [i for i in members if len(by_identity[i]) >= 2]

        def same_pair(multi: list[int] = multi) -> tuple[int, int]:
            a, b = rng.choice(by_identity[multi[rng.integers(len(multi))]], 2, replace=False)
            return int(a), int(b)

        def different_pair(members: list[int] = members) -> tuple[int, int]:
            i, j = rng.choice(members, 2, replace=False)
            return int(rng.choice(by_identity[int(i)])), int(rng.choice(by_identity[int(j)]))

        same = _unique_pairs(same_pair, pairs_per_fold // 2) if multi else []
        different = _unique_pairs(different_pair, len(same))
        for a, b in same + different:
            left.append(a), right.append(b), fold.append(f)
    return np.array(left, np.int64), np.array(right, np.int64), np.array(fold, np.int64)


def _unique_pairs(draw: Callable[[], tuple[int, int]], count: int) -> list[tuple[int, int]]:
    """Up to `count` distinct unordered pairs from `draw`, giving up after 50x attempts."""
    found: dict[tuple[int, int], None] = {}
    for _ in range(50 * count):
        if len(found) >= count:
            break
        a, b = draw()
        found[(min(a, b), max(a, b))] = None
    return list(found)


@dataclass
class PairsResult(Result):
    out: str
    pairs: int
    same: int
    different: int


def write_pairs(
    workspace: Workspace, name: str, out: str | os.PathLike[str], *, n_folds: int = 10,
    pairs_per_fold: int = 600, seed: int = 0,
) -> PairsResult:
    """Write a `.bin` of LFW-style pairs drawn from the registered labeled set `name`."""
    with workspace.connect(read_only=True) as con, LabeledSet(workspace, con, name) as labeled:
        try:
            left, right, _ = generate_pairs(labeled.labels, n_folds=n_folds,
                                            pairs_per_fold=pairs_per_fold, seed=seed)
        except ValueError as exc:
            raise WorkbenchError(f"cannot make pairs from {name}: {exc}") from None
        images = [labeled.crop_bytes(int(p)) for pair in zip(left, right, strict=True) for p in pair]
    issame = labeled.labels[left] == labeled.labels[right]
    write_bin(out, images, issame)
    return PairsResult(str(out), len(issame), int(issame.sum()), int((~issame).sum()))
