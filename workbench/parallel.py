"""Process pools and chunking shared by the long-running commands."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from itertools import islice
from typing import Any, TypeVar

T = TypeVar("T")


class Mapper:
    """The one engine interface: an ordered, lazy `map` called as `mapper(fn, items)`, and
    `map_with(fn, shared, items)` for a large value every call needs. This one runs on this
    machine (forked processes, or in-process for one worker); `cluster.RayMapper` runs the same
    calls as Ray tasks. `distributed` says whether work is worth shipping even when it threads
    by itself; `nodes` counts the shards each machine ran (empty here)."""

    distributed = False

    def __init__(self, imap: Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]] = map):
        self._imap = imap
        self.nodes: Counter[str] = Counter()

    def __call__(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterable[Any]:
        return self._imap(fn, items)

    def map_with(self, fn: Callable[[Any, Any], Any], shared: Any, items: Iterable[Any],
                 shard_size: int = 1) -> Iterator[Any]:
        """`fn(shared, item)` over items, in this process (no copy of `shared` is made)."""
        return (fn(shared, item) for item in items)


@contextmanager
def process_mapper(workers: int, chunksize: int = 16) -> Iterator[Mapper]:
    """An ordered, lazy `map` over `workers` forked processes (in-process for one).

    Fork before opening DuckDB, so no database threads are copied into workers.
    """
    if workers <= 1:
        yield Mapper()
        return
    pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        yield Mapper(partial(pool.imap, chunksize=chunksize))
    finally:
        pool.terminate()
        pool.join()


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
