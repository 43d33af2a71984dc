"""Embeddings on disk: one append-only float32 matrix per model, rows keyed in the manifest.

Vectors are appended and fsynced before their rows are committed, so a crash
leaves at most unreferenced rows at the end of the file, never a referenced
row without its vector. Item ids: a face id for unlabeled faces; for labeled
samples, the key their registration gives them (`labeled/registry.py`).
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from workbench.embed.models import ModelSpec
from workbench.errors import WorkbenchError
from workbench.formats.mapped import ReleasingMap, segments
from workbench.manifest.query import one, registered
from workbench.manifest.workspace import Workspace

GATHER_ROWS = 65_536  # vectors read from the file at once


def vectors_path(workspace: Workspace, model_key: str) -> Path:
    return workspace.root / "embeddings" / model_key / "vectors.f32"


class EmbeddingStore:
    def __init__(self, workspace: Workspace, con: duckdb.DuckDBPyConnection, spec: ModelSpec, dim: int):
        self.con, self.spec, self.dim = con, spec, dim
        self.key = spec.key
        self.path = vectors_path(workspace, self.key)
        self.dir = self.path.parent
        self.row_bytes = 4 * dim
        existing = one(con, "SELECT dim FROM embedding_models WHERE model_key = ?", [self.key])
        if existing is None:
            con.execute("INSERT INTO embedding_models (model_key, kind, path, flip, dim, created_at) "
                        "VALUES (?, ?, ?, ?, ?, now())",
                        [self.key, spec.kind, spec.path, spec.flip, dim])
        elif existing[0] != dim:
            raise WorkbenchError(f"model {self.key} was recorded with {existing[0]}-d vectors, it now "
                                 f"gives {dim}-d: its weights file changed under the same hash key")

    @classmethod
    def open_existing(cls, workspace: Workspace, con: duckdb.DuckDBPyConnection,
                      spec: ModelSpec) -> EmbeddingStore | None:
        row = one(con, "SELECT dim FROM embedding_models WHERE model_key = ?", [spec.key])
        return None if row is None else cls(workspace, con, spec, int(row[0]))

    def missing(self, item_ids: list[str]) -> list[str]:
        """The ids among `item_ids` without a stored vector, in the given order."""
        if not item_ids:
            return []
        with registered(self.con, wanted=pa.table({"item_id": pa.array(item_ids, pa.string())})):
            have = {r[0] for r in self.con.execute(
                "SELECT w.item_id FROM wanted w JOIN embeddings e "
                "ON e.item_id = w.item_id AND e.model_key = ?", [self.key]).fetchall()}
        return [i for i in item_ids if i not in have]

    def append(self, item_ids: list[str] | pa.Array, vectors: np.ndarray, *, durable: bool = True) -> None:
        """Write `vectors` at the file's end and insert their rows. `durable=False` leaves the fsync
        to `sync()`, which the caller must call before its transaction commits (an import commits
        millions of rows at once: one fsync, not one per chunk)."""
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.shape != (len(item_ids), self.dim):
            raise ValueError(f"expected {(len(item_ids), self.dim)} vectors, got {vectors.shape}")
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as handle:
            size = handle.tell()
            if size % self.row_bytes:  # a torn write from a crash: drop the partial row
                handle.truncate(size - size % self.row_bytes)
                size -= size % self.row_bytes
            handle.write(memoryview(vectors))  # the array's own bytes, not a copy
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        first = size // self.row_bytes
        with registered(self.con, new_rows=pa.table({
            "item_id": item_ids if isinstance(item_ids, pa.Array) else pa.array(item_ids, pa.string()),
            "row": pa.array(np.arange(first, first + len(item_ids)), pa.int64()),
        })):
            self.con.execute("INSERT INTO embeddings (model_key, item_id, row) "
                             "SELECT ?, item_id, row FROM new_rows", [self.key])

    def sync(self) -> None:
        """Make every appended vector durable (after `append(..., durable=False)`)."""
        if self.path.exists():
            with open(self.path, "rb") as handle:
                os.fsync(handle.fileno())

    @staticmethod
    def zero(workspace: Workspace, con: duckdb.DuckDBPyConnection, item_ids: list[str]) -> int:
        """Overwrite the stored vectors of `item_ids` under every model with zeros, in place (an
        erasure: rows keep their numbers, so other items' vectors stay where the manifest says)."""
        rows = con.execute(
            "SELECT e.model_key, e.row, m.dim FROM embeddings e JOIN embedding_models m USING (model_key) "
            "WHERE e.item_id IN (SELECT unnest(?::VARCHAR[]))", [item_ids]).fetchall()
        for model_key, row, dim in rows:
            with open(vectors_path(workspace, model_key), "r+b") as handle:
                handle.seek(int(row) * 4 * int(dim))
                handle.write(np.zeros(int(dim), "<f4").tobytes())
                handle.flush()
                os.fsync(handle.fileno())
        return len(rows)

    def rows(self, item_ids: list[str]) -> np.ndarray:
        """Row numbers of `item_ids` in order; KeyError if any is missing."""
        found = stored_rows(self.con, self.key, item_ids)
        if len(found["pos"]) != len(item_ids):
            raise KeyError(f"{len(item_ids) - len(found['pos'])} items have no embedding")
        return found["row"]

    def vectors(self, item_ids: list[str], dtype: type = np.float32) -> np.ndarray:
        """Stored vectors of `item_ids` in order, as `dtype` (float16 holds millions of faces in
        half the memory; see `unit.unit_rows`); see `gather_rows`."""
        return gather_rows(self.path, self.dim, self.rows(item_ids), dtype)


def gather_rows(path: Path, dim: int, rows: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Rows `rows` of the vector file at `path`, in order, as `dtype`. Read in file order, a block
    at a time (no float32 copy of them all is made on the way), through a map whose pages go back
    to the kernel as the reading moves on: gathering 5.8M 512-d vectors would otherwise leave the
    14 GB file in the resident set beside the 6 GB of float16 it returns."""
    out = np.empty((len(rows), dim), dtype)
    if not len(rows):
        return out
    order = np.argsort(rows, kind="stable")
    ordered = np.asarray(rows)[order]
    pages = ReleasingMap(path)
    try:
        whole_rows = len(pages.map) // (4 * dim)  # a torn last row (a crash mid-append) is never referenced
        matrix = np.frombuffer(pages.map, "<f4", count=whole_rows * dim).reshape(whole_rows, dim)
        for segment in segments(ordered * (4 * dim)):
            for start in range(segment.start, segment.stop, GATHER_ROWS):
                block = slice(start, min(start + GATHER_ROWS, segment.stop))
                out[order[block]] = matrix[ordered[block]]
            pages.release()
        del matrix  # the map cannot close while a view of it is alive
    finally:
        pages.close()
    return out


def stored_rows(con: duckdb.DuckDBPyConnection, model_key: str, item_ids: list[str]) -> dict[str, np.ndarray]:
    """`pos` (index into `item_ids`) and `row` (in the vector file) of the items that have a vector."""
    with registered(con, wanted=pa.table({"item_id": pa.array(item_ids, pa.string()),
                                     "pos": pa.array(np.arange(len(item_ids)), pa.int64())})):
        hits = con.execute("SELECT w.pos, e.row FROM wanted w JOIN embeddings e ON e.item_id = w.item_id "
                           "AND e.model_key = ? ORDER BY w.pos", [model_key]).fetchnumpy()
    return hits


def read_vectors(workspace: Workspace, con: duckdb.DuckDBPyConnection, model_key: str,
                 item_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stored vectors of `item_ids` under `model_key`: (found mask, vectors of the found, in order)."""
    dim = one(con, "SELECT dim FROM embedding_models WHERE model_key = ?", [model_key])
    if dim is None:
        raise KeyError(f"no embedding model {model_key}")
    hits = stored_rows(con, model_key, item_ids)
    found = np.zeros(len(item_ids), bool)
    found[hits["pos"]] = True
    if not found.any():  # also where the model is recorded but nothing was embedded yet (no file)
        return found, np.empty((0, int(dim[0])), np.float32)
    return found, gather_rows(vectors_path(workspace, model_key), int(dim[0]), hits["row"])


def centres_path(store: EmbeddingStore, registration: str, per_identity: int, seed: int) -> Path:
    """Identity centres of one labeled-set registration (`labeled/registry.py`)."""
    return store.dir / f"centres_{registration}_k{per_identity}_s{seed}.npy"
