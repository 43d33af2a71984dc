"""Process pools and chunking shared by the long-running commands."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from itertools import islice
from typing import Any, TypeVar

T = TypeVar("T")
Mapper = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]


@contextmanager
def process_mapper(workers: int, chunksize: int = 16) -> Iterator[Mapper]:
    """An ordered, lazy `map` over `workers` forked processes (plain `map` for one).

    Fork before opening DuckDB, so no database threads are copied into workers.
    """
    if workers <= 1:
        yield map
        return
    pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        yield partial(pool.imap, chunksize=chunksize)
    finally:
        pool.terminate()
        pool.join()


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
