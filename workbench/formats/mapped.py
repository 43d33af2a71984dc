"""A read-only file map that hands the pages it read back to the kernel.

Pages of a file map that a process has touched count in its resident set until the map is dropped,
even though the kernel may reclaim them: gathering MS1MV2's vectors (14 GB at 512-d) or scanning its
14 GB RecordIO file through a plain map shows as 14 GB more peak RSS, which is what memory limits
(cgroups, schedulers, `ru_maxrss`) see. `madvise(MADV_DONTNEED)` on a shared file map drops them from
the process; they stay in the page cache, and the data behind live views stays valid (it is read
again from the cache on the next touch).

A read makes more than its bytes resident: the page cache holds files in folios of up to a PMD
(2 MiB on x86-64; ext4 and XFS use them on recent kernels), and a fault maps the whole cached folio.
Measured on this project's machine: one byte read every 4 MiB made 2 MiB resident per read. So the
cost of a read is counted as the bytes since the previous read's start, up to one folio.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
from collections.abc import Iterator

import numpy as np

RESIDENT_BYTES = 256 << 20  # what may become resident between two releases back to the kernel
FOLIO_BYTES = 2 << 20  # the most one scattered read can make resident


def read_costs(offsets: np.ndarray) -> np.ndarray:
    """What each read at `offsets` (in the order made, each smaller than a folio) may add to the
    resident set: the distance from the previous read, at most a folio (a scan costs its bytes, a
    scattered read a folio)."""
    steps = np.abs(np.diff(np.asarray(offsets, np.int64), prepend=np.int64(-FOLIO_BYTES)))
    return np.minimum(steps, FOLIO_BYTES)


def segments(offsets: np.ndarray) -> Iterator[slice]:
    """Consecutive runs of the reads at `offsets` that each may make at most about
    `RESIDENT_BYTES` resident; release the map between two."""
    total = np.cumsum(read_costs(offsets))
    budgets = np.arange(RESIDENT_BYTES, total[-1] if len(total) else 0, RESIDENT_BYTES)
    cuts = np.searchsorted(total, budgets, "right")  # a run ends where its costs pass a budget
    for start, end in itertools.pairwise(np.unique(np.concatenate([[0], cuts, [len(total)]])).tolist()):
        yield slice(start, end)


class ReleasingMap:
    """`map`: the whole file, read-only. Report reads one at a time with `read(offset, nbytes)`,
    or release between the `segments` of a batch yourself; every `RESIDENT_BYTES` they may have
    made resident, the map's resident pages are released."""

    def __init__(self, path: str | os.PathLike[str]):
        with open(path, "rb") as handle:
            self.map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        self._since_release = 0
        self._last = -FOLIO_BYTES

    def read(self, offset: int, nbytes: int) -> None:
        """Count a read of `nbytes` at `offset` as `read_costs` would, plus what a read larger than
        a folio (a huge record) spans beyond it, and release when due."""
        self._since_release += min(abs(offset - self._last), FOLIO_BYTES) + max(nbytes - FOLIO_BYTES, 0)
        self._last = offset
        if self._since_release >= RESIDENT_BYTES:
            self.release()

    def release(self) -> None:
        self._since_release = 0
        if hasattr(mmap, "MADV_DONTNEED"):
            with contextlib.suppress(ValueError, OSError):  # a closed map has nothing to release
                self.map.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        # Views still alive (a reader's memoryviews) keep the map open until they are released.
        with contextlib.suppress(BufferError):
            self.map.close()
