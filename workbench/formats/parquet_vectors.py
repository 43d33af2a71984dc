"""A Parquet file's `vector` column, in file order, decoded a row group ahead on other threads.

Decoding a list column is most of what importing millions of vectors costs:
Arrow decodes one column of one row group on one thread (about 90M floats/s
here), so row groups are decoded `AHEAD` at a time on threads of their own
while the caller stores the previous ones. Memory stays bounded by the row
groups in flight (fewer ahead when they are large: a 512-d file's groups of
500,000 rows are 1 GB each; an import of 2M such rows peaked at 6.2 GiB with
two decoding beside the one being stored, 4.7 GiB with one); a row group
larger than `GROUP_BYTES` uncompressed is read in batches instead, so a file
written as one huge group is never held whole.
While reading, Arrow allocates from jemalloc: with pyarrow's default (mimalloc)
buffers decoded on one thread and freed on another were mapped afresh each time,
and the kernel's page work doubled the read (3.4 GB of 128-d vectors: 9.3 s
with 11 s of system time, against 5.7 s with 4.7 s).
Nothing here knows about keys: the caller pairs rows with their keys by
position.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

AHEAD = 2  # row groups decoded at once, at most
AHEAD_BYTES = 3 << 29  # and at most 1.5 GiB of them (uncompressed), but always one
GROUP_BYTES = 1 << 30  # larger row groups are read in batches, one after another
BATCH_ROWS = 131_072


class VectorColumn:
    """`with VectorColumn(path) as column: for piece in column: ...`; decoding starts on entry, so
    the caller's own work before the loop (hashing the file) overlaps it."""

    def __init__(self, path: Path, column: str = "vector") -> None:
        self.path, self.column = path, column
        self.meta = pq.ParquetFile(path).metadata
        groups = [self.meta.row_group(i) for i in range(self.meta.num_row_groups)]
        largest = max((g.total_byte_size for g in groups), default=0)
        self._batched = largest > GROUP_BYTES
        self._ahead = max(1, min(AHEAD, AHEAD_BYTES // max(1, largest)))
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[pa.ChunkedArray]] = deque()
        self._next = 0

    def __enter__(self) -> VectorColumn:
        self._pool_before = pa.default_memory_pool()
        with suppress(NotImplementedError):  # wheels built without jemalloc keep their default
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        if not self._batched:
            self._pool = ThreadPoolExecutor(self._ahead, thread_name_prefix="parquet-vectors")
            while len(self._pending) < self._ahead and self._submit():
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
        pa.set_memory_pool(self._pool_before)

    def _submit(self) -> bool:
        if self._next >= self.meta.num_row_groups:
            return False
        self._pending.append(self._pool.submit(self._read_group, self._next))
        self._next += 1
        return True

    def _read_group(self, index: int) -> pa.ChunkedArray:
        # a reader per task: one ParquetFile is not documented as safe across threads
        return pq.ParquetFile(self.path, metadata=self.meta).read_row_group(
            index, columns=[self.column]).column(0)

    def __iter__(self) -> Iterator[pa.ChunkedArray]:
        """The column's rows in file order, a row group (or a batch of a large one) at a time."""
        if self._batched:
            reader = pq.ParquetFile(self.path, metadata=self.meta)
            for batch in reader.iter_batches(BATCH_ROWS, columns=[self.column]):
                yield pa.chunked_array([batch.column(0)])
            return
        while self._pending:
            group = self._pending.popleft().result()
            self._submit()
            yield group
