"""Vectors in and out: `wb embed --import FILE --model-name NAME` and `wb embed --export FILE`.

Teams compute features for MS1MV2 on GPU clusters; re-embedding 5.8M faces on a
CPU takes hours. An imported file is a model like any other: its key names the
name and the file's hash (`import-NAME-<sha12>`), later commands use it as
`--model imported:NAME`, and a name is bound to one file (importing another file
under it is refused). The file is Parquet, one row per face: a `vector` column
(a list of float32) and keys as users have them: `face_id` (as in `wb_faces`),
or `set_name` with `sample_idx` or `locator` (as in `wb_labeled_samples`).
`--export` writes the same shape, so vectors travel between workspaces.

The file is read once and never held whole: DuckDB joins the key columns
alone to the manifest's items (a row's item, in file order), while Arrow decodes
the vector column a row group ahead on other threads (`formats/parquet_vectors.py`);
the two are paired by row position. Each chunk is checked as it goes: one
dimension, no NaN or zero vectors, no duplicate keys (the embeddings' primary
key), every key matching a face or a registered sample. Chunks are appended in
one transaction while the file is still good; any failure is one line, and the
rows roll back and the vector file is cut back, so nothing is written. Items
that already have a vector under the model are skipped, so a re-import is a
no-op.
"""

from __future__ import annotations

import os
import re
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workbench.embed.models import ModelSpec
from workbench.embed.store import EmbeddingStore, gather_rows, vectors_path
from workbench.errors import WorkbenchError
from workbench.formats.parquet_vectors import VectorColumn
from workbench.labeled import registry
from workbench.manifest.query import one, transaction
from workbench.manifest.runs import Run, open_run
from workbench.manifest.workspace import Workspace
from workbench.results import Result
from workbench.weights import sha256_of

CHUNK = 65_536
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def resolve(workspace: Workspace, spec: ModelSpec) -> ModelSpec:
    """`imported:NAME` as the recorded model (other specs as they are)."""
    if spec.kind != "imported":
        return spec
    with workspace.connect(read_only=True) as con:
        row = one(con, "SELECT model_key, path FROM embedding_models WHERE kind = 'import' "
                       "AND starts_with(model_key, ?)", [f"import-{spec.path}-"])
    if row is None:
        raise WorkbenchError(f"no imported model named {spec.path!r}: wb embed --import FILE "
                             f"--model-name {spec.path}")
    return ModelSpec("import", row[1], fixed_key=row[0])


@dataclass
class ImportResult(Result):
    """`wb embed --import`: the model, how many rows matched faces and labeled samples, stored now."""

    model: str
    model_key: str
    dim: int
    rows: int
    faces: int
    labeled_samples: int
    stored_now: int
    run_id: str


def _key_sql(columns: set[str]) -> str:
    """Item ids of the file's rows by position (`pos`, from 0; NULL where a key matches nothing),
    as a DuckDB relation of plain hash joins (a correlated look-up per row is minutes at MS1MV2's
    5.8M rows). Only key columns are read: the vectors come through `VectorColumn`."""
    joins, labeled = [], []
    if "face_id" in columns:
        joins.append("LEFT JOIN faces f ON f.face_id = v.face_id")
    if "set_name" in columns:
        for key, alias in (("sample_idx", "si"), ("locator", "sl")):
            if key in columns:
                joins.append(f"LEFT JOIN (SELECT s.set_name, s.{key}, 'S:' || ls.registration || ':' || "
                             f"s.sample_idx AS item FROM labeled_samples s JOIN labeled_sets ls "
                             f"ON ls.name = s.set_name WHERE s.status = 'ok') {alias} "
                             f"ON {alias}.set_name = v.set_name AND {alias}.{key} = v.{key}")
                labeled.append(f"{alias}.item")
    face = ["f.face_id"] if "face_id" in columns else []
    item = f"coalesce({', '.join(face + labeled)})" if face + labeled else "NULL"
    return f"""SELECT v.file_row_number AS pos, {item} AS item_id
               FROM read_parquet($file, file_row_number = true) v {' '.join(joins)}"""


def _check_columns(file: Path, columns: set[str]) -> None:
    if "vector" not in columns:
        raise WorkbenchError(f"{file}: no 'vector' column (columns: {', '.join(sorted(columns))})")
    if "face_id" not in columns and not ({"set_name"} <= columns and columns & {"sample_idx", "locator"}):
        raise WorkbenchError(f"{file}: rows need a key: face_id, or set_name with sample_idx or locator")


@dataclass
class _Tally:
    """What one pass over a file found: the refusals are decided from it once the pass is done."""

    rows: int = 0
    low: int | None = None  # fewest and most components of a vector
    high: int | None = None
    bad: int = 0  # NaN, infinite, zero or missing vectors
    unmatched: int = 0
    unmatched_example: int | None = None
    _unit: np.ndarray | None = None  # reused for every chunk's unit vectors (no fresh pages each time)

    def add(self, column: pa.ChunkedArray, keys: pa.Table) -> np.ndarray | None:
        """Count a chunk (its vectors, and their keys' rows); the vectors as an (n, dim) float32
        matrix of unit rows while the file is still good (None once it is not: the rest is only
        counted). The matrix is overwritten by the next call: store it first."""
        lengths = pc.list_value_length(column)
        low, high = pc.min(lengths).as_py(), pc.max(lengths).as_py()  # None: every vector missing
        if low is not None:
            self.low = low if self.low is None else min(self.low, low)
            self.high = high if self.high is None else max(self.high, high)
        missing = keys.column("item_id").is_null()
        unmatched = pc.sum(missing).as_py() or 0
        if unmatched and self.unmatched_example is None:
            self.unmatched_example = int(keys.column("pos")[pc.index(missing, True).as_py()].as_py()) + 1
        self.unmatched += unmatched
        self.rows += len(column)
        self.bad += column.null_count
        if self.low != self.high or not self.low:
            return None
        present = column.drop_null() if column.null_count else column
        flat = pc.list_flatten(present).to_numpy(zero_copy_only=False)  # element nulls: NaN
        vectors = np.asarray(flat, np.float32).reshape(-1, self.low)
        norms = np.sqrt(np.einsum("nd,nd->n", vectors, vectors))
        self.bad += int((~np.isfinite(norms) | (norms == 0)).sum())
        if self.bad or self.unmatched:
            return None
        if self._unit is None or self._unit.shape[0] < len(vectors) or self._unit.shape[1] != self.low:
            self._unit = np.empty((len(vectors), self.low), np.float32)
        return np.divide(vectors, norms[:, None], out=self._unit[: len(vectors)])

    def refusal(self, file: Path) -> str | None:
        if self.rows == 0:
            return f"{file}: no rows"
        if self.low != self.high:
            return f"{file}: vectors of {self.low} to {self.high} dimensions; every row needs the same"
        if self.bad:
            return f"{file}: {self.bad} vectors are NaN, infinite or all zero (or missing); nothing imported"
        if self.unmatched:
            return (f"{file}: {self.rows - self.unmatched:,} of {self.rows:,} rows match a face or a "
                    f"registered labeled sample (row {self.unmatched_example} matches none); "
                    "nothing imported")
        return None


class _Duplicates(Exception):
    """Two rows of the file name one face or sample (by one key, or by sample_idx and locator)."""


class _KeyRows:
    """The key side of the pass: each file row's item (NULL: matches nothing) and whether the
    model already stores it, in file order, handed out in exactly the pieces the vectors come in."""

    def __init__(self, reader: pa.RecordBatchReader) -> None:
        self._reader, self._taken = reader, 0
        self._held = pa.table({"pos": pa.array([], pa.int64())})  # nothing held yet

    def take(self, n: int) -> pa.Table:
        parts, have = ([self._held] if len(self._held) else []), len(self._held)
        while have < n:
            batch = self._reader.read_next_batch()  # StopIteration: fewer key rows than vectors
            parts.append(pa.Table.from_batches([batch]))
            have += len(batch)
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        piece, self._held = table.slice(0, n), table.slice(n)
        pos = piece.column("pos")
        if pos[0].as_py() != self._taken or pos[n - 1].as_py() != self._taken + n - 1:
            raise _Duplicates  # a row matched two items (one sample by sample_idx and by locator)
        self._taken += n
        return piece


def _numeric_list(kind: pa.DataType) -> bool:
    return (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) \
        and (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type))


def run_import(workspace: Workspace, file: Path, name: str) -> ImportResult:
    """`wb embed --import FILE --model-name NAME`."""
    if not NAME.match(name):
        raise WorkbenchError("--model-name: letters, digits, '.', '_' and '-', up to 64, e.g. r100-ms1mv2")
    path = file.expanduser().resolve()
    if not path.is_file():
        raise WorkbenchError(f"no such file: {path}")
    try:
        schema = pq.read_schema(path)
        columns = set(schema.names)
        _check_columns(path, columns)
        if not _numeric_list(schema.field("vector").type):
            raise WorkbenchError(f"{path}: 'vector' must be a list of numbers "
                                 f"(it is {schema.field('vector').type})")
        vectors = VectorColumn(path)
    except (OSError, pa.ArrowException) as exc:
        raise WorkbenchError(f"{path} is not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    with vectors:  # decoding starts here, beside the hash
        key = f"import-{name}-{sha256_of(path)[:12]}"  # a name is one file: its hash is the model's key
        with open_run(workspace, "embed import", {"file": str(path), "name": name}) as (con, run):
            bound = one(con, "SELECT model_key FROM embedding_models WHERE kind = 'import' "
                             "AND starts_with(model_key, ?)", [f"import-{name}-"])
            if bound is not None and bound[0] != key:
                raise WorkbenchError(f"the name {name!r} is bound to another file's vectors ({bound[0]}); "
                                     "choose another --model-name")
            try:
                return _store(workspace, con, run, path, columns, vectors, name, key)
            except _Duplicates:
                rows, distinct = con.execute(
                    f"SELECT count(item_id), count(DISTINCT item_id) FROM ({_key_sql(columns)})",
                    {"file": str(path)}).fetchone()
                raise WorkbenchError(f"{path}: keys appear more than once ({rows - distinct:,} rows name a "
                                     "face or sample another row names); nothing imported") from None
            except (duckdb.Error, pa.ArrowException) as exc:  # Arrow: a page that does not decode
                raise WorkbenchError(f"{path}: {str(exc).splitlines()[0]}") from None


def _store(workspace: Workspace, con: duckdb.DuckDBPyConnection, run: Run, path: Path, columns: set[str],
           vectors: VectorColumn, name: str, key: str) -> ImportResult:
    """One pass over the file: each chunk is counted for the refusals and, while the file is still
    good, appended (unit length) to the store of model `key`, in one transaction. A refusal rolls
    the rows back and cuts the vector file back to where it was, so nothing is written."""
    target = vectors_path(workspace, key)
    kept = target.stat().st_size if target.exists() else None
    tally, store, stored = _Tally(), None, 0
    try:
        with transaction(con), closing(con.cursor()) as keys_con:  # it streams while `con` writes
            # items that already have a vector under the model (a re-import) are counted, not stored
            keys = _KeyRows(keys_con.sql(
                f"SELECT k.pos, k.item_id, e.item_id IS NOT NULL AS stored FROM "
                f"({_key_sql(columns)}) k LEFT JOIN (SELECT item_id FROM embeddings WHERE model_key = "
                "$model_key) e ON e.item_id = k.item_id ORDER BY k.pos",
                params={"file": str(path), "model_key": key}).to_arrow_reader(CHUNK))
            for group in vectors:
                for start in range(0, len(group), CHUNK):
                    column = group.slice(start, CHUNK)
                    rows = keys.take(len(column))
                    unit = tally.add(column, rows)
                    new = ~np.asarray(rows.column("stored").to_numpy(), bool)
                    if unit is None or not new.any():
                        continue
                    if store is None:
                        store = EmbeddingStore(workspace, con, ModelSpec("import", str(path), fixed_key=key),
                                               unit.shape[1])
                    try:
                        store.append(rows.column("item_id").filter(pa.array(new)).combine_chunks(),
                                     unit if new.all() else unit[new], durable=False)
                    except duckdb.ConstraintException:
                        raise _Duplicates from None
                    stored += int(new.sum())
            refusal = tally.refusal(path)
            if refusal:
                raise WorkbenchError(refusal)
            if store is not None:
                store.sync()  # the vectors are on disk before their rows commit
    except BaseException:
        if kept is None:
            target.unlink(missing_ok=True)
            with suppress(OSError):  # the model's folder, made for this file
                target.parent.rmdir()
        else:
            os.truncate(target, kept)
        raise
    counts = con.execute("SELECT count(*) FILTER (NOT starts_with(item_id, ?)), "
                         "count(*) FILTER (starts_with(item_id, ?)) FROM embeddings WHERE model_key = ?",
                         [registry.ITEM_PREFIX, registry.ITEM_PREFIX, key]).fetchone()
    result = ImportResult(f"imported:{name}", key, tally.low or 0, tally.rows, int(counts[0]), int(counts[1]),
                          stored, run.run_id)
    run.counts = result.as_dict()
    return result


@dataclass
class ExportResult(Result):
    """`wb embed --export`: where, which model, how many vectors of faces and labeled samples."""

    out: str
    model_key: str
    dim: int
    faces: int
    labeled_samples: int


def run_export(workspace: Workspace, out: Path, spec: ModelSpec, sets: list[str] | None = None
               ) -> ExportResult:
    """`wb embed --export FILE`: the stored vectors of a model (`sets`: 'unlabeled' and/or labeled
    set names; default every one), keyed as `--import` reads them, written in row groups."""
    spec = resolve(workspace, spec)
    out = out.expanduser().resolve()
    with workspace.connect(read_only=True) as con:
        store = EmbeddingStore.open_existing(workspace, con, spec)
        if store is None:
            raise WorkbenchError(f"no vectors stored under {spec.key}; run wb embed with that model first")
        wanted = sets or ["unlabeled", *(r.name for r in registry.every(con))]
        regs = [registry.get(con, s) for s in wanted if s != "unlabeled"]
        schema = pa.schema([("face_id", pa.string()), ("set_name", pa.string()), ("sample_idx", pa.int64()),
                            ("locator", pa.string()), ("vector", pa.list_(pa.float32(), store.dim))])
        queries = []  # (counted as, SQL, parameters)
        if "unlabeled" in wanted:
            queries.append(("faces", "SELECT e.item_id AS face_id, NULL AS set_name, "
                            "NULL::BIGINT AS sample_idx, NULL AS locator, e.row FROM embeddings e "
                            "JOIN faces f ON f.face_id = e.item_id WHERE e.model_key = ? ORDER BY e.item_id",
                            [store.key]))
        for reg in regs:
            queries.append(("labeled", "SELECT NULL AS face_id, s.set_name, s.sample_idx, s.locator, e.row "
                            "FROM labeled_samples s JOIN embeddings e ON e.item_id = ? || s.sample_idx "
                            "WHERE s.set_name = ? AND e.model_key = ? ORDER BY s.sample_idx",
                            [reg.item_prefix, reg.name, store.key]))
        counts = {"faces": 0, "labeled": 0}
        tmp = out.with_name(out.name + ".partial")
        with pq.ParquetWriter(tmp, schema) as writer:
            for kind, sql, params in queries:
                for batch in con.sql(sql, params=params).to_arrow_reader(CHUNK):
                    rows = batch.column("row").to_numpy()
                    vectors = gather_rows(store.path, store.dim, rows)
                    flat = pa.array(vectors.reshape(-1), pa.float32())
                    table = pa.table({
                        "face_id": batch.column("face_id").cast(pa.string()),
                        "set_name": batch.column("set_name").cast(pa.string()),
                        "sample_idx": batch.column("sample_idx").cast(pa.int64()),
                        "locator": batch.column("locator").cast(pa.string()),
                        "vector": pa.FixedSizeListArray.from_arrays(flat, store.dim)}, schema=schema)
                    writer.write_table(table)
                    counts[kind] += len(rows)
        tmp.replace(out)
    return ExportResult(str(out), store.key, store.dim, counts["faces"], counts["labeled"])
