"""Ray, the workbench's engine beyond one machine: the process pool's ordered `map`, as Ray tasks.

Every long command already streams its work in chunks through a `Mapper`
(`parallel.process_mapper`) and commits each finished chunk to the manifest in
one transaction. `ray_mapper` is the same interface on a Ray cluster: a chunk
is cut into shards, each shard is one Ray task (scheduled by Ray on any node,
retried by Ray when its worker dies), and the results come back to the driver
in order. Workers never open DuckDB; they write crops into the workspace (a
filesystem every node mounts) and return rows, and the driver commits them,
so killing the driver loses at most the chunk in flight and a re-run redoes
exactly that. Which node ran how many shards is counted on the mapper. Work that
asks for a GPU goes to `ShardWorker` actors, one long-lived process per GPU, so
a model is loaded once per GPU rather than once per shard.

`--ray local` (or no address) starts a Ray instance on this machine, `auto`
joins the cluster this machine belongs to, `HOST:PORT` joins that one.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from workbench.errors import WorkbenchError, first_line
from workbench.parallel import Mapper, chunked, process_mapper

MAX_RETRIES = 3  # a task whose worker process dies is run again, up to this many times
INSTALL_HINT = 'Ray is not installed: pip install -e ".[ray]"'


def load_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise WorkbenchError(INSTALL_HINT) from None
    return ray


def _run_shard(fn: Callable[[Any], Any], shard: list[Any]) -> tuple[str, list[Any]]:
    """One task: `fn` over a shard, and the id of the node that ran it."""
    import ray

    return ray.get_runtime_context().get_node_id(), [fn(item) for item in shard]


def _run_shard_with(fn: Callable[[Any, Any], Any], shared: Any, shard: list[Any]) -> tuple[str, list[Any]]:
    """One task: `fn(shared, item)` over a shard; `shared` arrives from the object store."""
    import ray

    return ray.get_runtime_context().get_node_id(), [fn(shared, item) for item in shard]


class ShardWorker:
    """A Ray actor for GPU work: one long-lived process per GPU, so what a shard's function loads
    once per process (a model, a CUDA context) is loaded once, not for every shard. (Ray runs a
    task that asks for a GPU in a fresh process each time.)"""

    def run(self, fn: Callable[[Any], Any], shard: list[Any]) -> tuple[str, list[Any]]:
        return _run_shard(fn, shard)


class RayMapper(Mapper):
    """`parallel.Mapper` as Ray tasks: `fn` over `items` in tasks of `shard_size` items, results
    lazily in order. All shards of a call are submitted at once, so the next chunk runs while
    the driver commits the last one."""

    distributed = True

    def __init__(self, ray: Any, shard_size: int, num_gpus: float = 0.0) -> None:
        self.ray = ray
        self.shard_size = shard_size
        self.task = ray.remote(max_retries=MAX_RETRIES, num_cpus=1)(_run_shard)
        self.task_with = ray.remote(max_retries=MAX_RETRIES, num_cpus=1)(_run_shard_with)
        self.nodes: Counter[str] = Counter()
        self.actors: list[Any] = []
        if num_gpus > 0:
            actor = ray.remote(num_cpus=1, num_gpus=num_gpus, max_restarts=MAX_RETRIES,
                               max_task_retries=MAX_RETRIES)(ShardWorker)
            count = max(1, int(ray.cluster_resources().get("GPU", 0) // num_gpus))
            self.actors = [actor.remote() for _ in range(count)]

    def __call__(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        shards = chunked(items, self.shard_size)
        if self.actors:  # round robin over the GPU actors; each runs its queue in order
            refs = [self.actors[i % len(self.actors)].run.remote(fn, shard) for i, shard in enumerate(shards)]
        else:
            refs = [self.task.remote(fn, shard) for shard in shards]
        return self._collect(refs)

    def map_with(self, fn: Callable[[Any, Any], Any], shared: Any, items: Iterable[Any],
                 shard_size: int = 1) -> Iterator[Any]:
        """`fn(shared, item)` over items: `shared` (an index's base vectors, say) is put in Ray's
        object store once and read by every task, not sent with each one."""
        handle = self.ray.put(shared)
        refs = [self.task_with.remote(fn, handle, shard) for shard in chunked(items, shard_size)]
        return self._collect(refs)

    def _collect(self, refs: list[Any]) -> Iterator[Any]:
        for ref in refs:
            node, results = self.ray.get(ref)
            self.nodes[node] += 1
            yield from results


def connect(ray: Any, address: str | None, num_cpus: int | None) -> bool:
    """Join or start Ray; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    settings: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                "configure_logging": False}
    if address not in (None, "", "local", "auto"):
        _check_reachable(address)
    try:
        if address in (None, "", "local"):
            ray.init(address="local", num_cpus=num_cpus, **settings)  # a new instance, never another
        else:
            ray.init(address=address, **settings)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise WorkbenchError(f"cannot join the Ray cluster at {address}: {first_line(exc)}") from None
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not Ray's minutes of retries, when nothing listens at HOST:PORT."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise WorkbenchError(f"--ray {address}: expected local, auto or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise WorkbenchError(f"cannot join the Ray cluster at {address}: "
                             f"{exc.strerror or type(exc).__name__}") from None


@contextmanager
def ray_mapper(address: str | None, *, num_cpus: int | None = None, shard_size: int = 32,
               gpus_per_task: float = 0.0) -> Iterator[RayMapper]:
    """Ray tasks on the cluster at `address`; `gpus_per_task` only where the cluster has GPUs."""
    ray = load_ray()
    started = connect(ray, address, num_cpus)
    try:
        gpus = gpus_per_task if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        yield RayMapper(ray, shard_size, gpus)
    finally:
        if started:
            ray.shutdown()


@contextmanager
def work_mapper(workers: int, ray: str | None, *, chunksize: int = 16, shard_size: int = 32,
                gpus_per_task: float = 0.0) -> Iterator[Mapper]:
    """Ray tasks when `ray` names a cluster (`local`, `auto`, `HOST:PORT`), else `workers` forked
    processes. Enter it before the manifest is opened (forked workers copy no DuckDB threads)."""
    if ray is None:
        with process_mapper(workers, chunksize) as mapper:
            yield mapper
    else:
        with ray_mapper(ray, num_cpus=workers if ray in ("", "local") else None, shard_size=shard_size,
                        gpus_per_task=gpus_per_task) as mapper:
            yield mapper


def nodes_used(mapper: Mapper) -> dict[str, int]:
    """Shards run per Ray node (empty for a local pool)."""
    return dict(mapper.nodes)
