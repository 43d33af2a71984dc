"""Vectors in and out: `wb embed --import FILE --model-name NAME` and `wb embed --export FILE`.

Teams compute features for MS1MV2 on GPU clusters; re-embedding 5.8M faces on a
CPU takes hours. An imported file is a model like any other: its key names the
name and the file's hash (`import-NAME-<sha12>`), later commands use it as
`--model imported:NAME`, and a name is bound to one file (importing another file
under it is refused). The file is Parquet, one row per face: a `vector` column
(a list of float32) and keys as users have them: `face_id` (as in `wb_faces`),
or `set_name` with `sample_idx` or `locator` (as in `wb_labeled_samples`).
`--export` writes the same shape, so vectors travel between workspaces.

The whole file is checked before anything is written, by DuckDB reading the file
itself (it streams; no Python holds the file): one dimension, no NaN or zero
vectors, no duplicate keys, every key matching a face or a registered sample.
Any failure is one line and writes nothing. Rows are then appended in chunks in
one transaction; items that already have a vector under the model are skipped,
so a re-import is a no-op.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.embed.models import ModelSpec
from workbench.embed.store import EmbeddingStore, vectors_path
from workbench.errors import WorkbenchError
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
    """Item ids of the file's rows (NULL where a key matches nothing), as a DuckDB relation of
    plain hash joins (a correlated look-up per row is minutes at MS1MV2's 5.8M rows)."""
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
    return f"""SELECT v.pos, {item} AS item_id, v.vector
               FROM (SELECT row_number() OVER () AS pos, * FROM read_parquet($file)) v {' '.join(joins)}"""


def _check(con: duckdb.DuckDBPyConnection, file: str, columns: set[str]) -> tuple[int, int]:
    """One-line refusals for a file that cannot be imported whole; (rows, dim)."""
    if "vector" not in columns:
        raise WorkbenchError(f"{file}: no 'vector' column (columns: {', '.join(sorted(columns))})")
    if "face_id" not in columns and not ({"set_name"} <= columns and columns & {"sample_idx", "locator"}):
        raise WorkbenchError(f"{file}: rows need a key: face_id, or set_name with sample_idx or locator")
    # one pass over the file: a NaN or infinite component makes the squared norm NaN or infinite;
    # two rows naming one face or sample (by the same key, or by sample_idx and locator) share an item
    rows, low, high, bad, matched, distinct, unmatched_example = con.execute(
        "SELECT count(*), min(len(vector)), max(len(vector)), count(*) FILTER (n2 IS NULL OR isnan(n2) "
        "OR isinf(n2) OR n2 = 0), count(item_id), count(DISTINCT item_id), any_value(pos) FILTER "
        f"(item_id IS NULL) FROM (SELECT k.*, list_dot_product(k.vector, k.vector) AS n2 FROM "
        f"({_key_sql(columns)}) k)", {"file": file}).fetchone()
    if rows == 0:
        raise WorkbenchError(f"{file}: no rows")
    if low != high:
        raise WorkbenchError(f"{file}: vectors of {low} to {high} dimensions; every row needs the same")
    if bad:
        raise WorkbenchError(f"{file}: {bad} vectors are NaN, infinite or all zero (or missing); "
                             "nothing imported")
    if matched < rows:
        raise WorkbenchError(f"{file}: {matched:,} of {rows:,} rows match a face or a registered labeled "
                             f"sample (row {unmatched_example} matches none); nothing imported")
    if distinct < matched:
        raise WorkbenchError(f"{file}: keys appear more than once ({matched - distinct:,} rows name a face "
                             "or sample another row names); nothing imported")
    return rows, int(low)


def run_import(workspace: Workspace, file: Path, name: str) -> ImportResult:
    """`wb embed --import FILE --model-name NAME`."""
    if not NAME.match(name):
        raise WorkbenchError("--model-name: letters, digits, '.', '_' and '-', up to 64, e.g. r100-ms1mv2")
    path = file.expanduser().resolve()
    if not path.is_file():
        raise WorkbenchError(f"no such file: {path}")
    try:
        columns = set(pq.read_schema(path).names)
    except (OSError, pa.ArrowException) as exc:
        raise WorkbenchError(f"{path} is not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    with ThreadPoolExecutor(1) as hasher:  # the file's hash (its key) is read while it is checked
        digest = hasher.submit(sha256_of, path)
        with open_run(workspace, "embed import", {"file": str(path), "name": name}) as (con, run):
            try:  # a name is one file, so its dimension is the file's: checked row by row
                rows, dim = _check(con, str(path), columns)
            except duckdb.Error as exc:
                raise WorkbenchError(f"{path}: {str(exc).splitlines()[0]}") from None
            key = f"import-{name}-{digest.result()[:12]}"
            return _store(workspace, con, run, path, columns, name, key, rows, dim)


def _store(workspace: Workspace, con: duckdb.DuckDBPyConnection, run: Run, path: Path, columns: set[str],
           name: str, key: str, rows: int, dim: int) -> ImportResult:
    """Stream a checked file's vectors, unit length, into the store of model `key`."""
    bound = one(con, "SELECT model_key FROM embedding_models WHERE kind = 'import' "
                     "AND starts_with(model_key, ?)", [f"import-{name}-"])
    if bound is not None and bound[0] != key:
        raise WorkbenchError(f"the name {name!r} is bound to another file's vectors ({bound[0]}); "
                             "choose another --model-name")
    stored = 0
    with transaction(con):
        store = EmbeddingStore(workspace, con, ModelSpec("import", str(path), fixed_key=key), dim)
        rows_con = con.cursor()  # the reader streams while `con` writes
        # items that already have a vector under the model (a re-import) are left out by the
        # query itself: one anti-join, not a look-up per chunk
        reader = rows_con.sql(
            f"SELECT k.item_id, k.vector FROM ({_key_sql(columns)}) k ANTI JOIN (SELECT item_id "
            f"FROM embeddings WHERE model_key = $model_key) e ON e.item_id = k.item_id",
            params={"file": str(path), "model_key": key}).to_arrow_reader(CHUNK)
        for batch in reader:
            ids = batch.column("item_id")
            flat = batch.column("vector").flatten().to_numpy(zero_copy_only=False)
            vectors = np.asarray(flat, np.float32).reshape(len(ids), dim)
            store.append(ids, vectors / np.sqrt(np.einsum("nd,nd->n", vectors, vectors))[:, None])
            stored += len(ids)
        rows_con.close()
    counts = con.execute("SELECT count(*) FILTER (NOT starts_with(item_id, ?)), "
                         "count(*) FILTER (starts_with(item_id, ?)) FROM embeddings WHERE model_key = ?",
                         [registry.ITEM_PREFIX, registry.ITEM_PREFIX, key]).fetchone()
    result = ImportResult(f"imported:{name}", key, dim, rows, int(counts[0]), int(counts[1]), stored,
                          run.run_id)
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
        matrix = np.memmap(vectors_path(workspace, store.key), dtype="<f4", mode="r").reshape(-1, store.dim)
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
                    vectors = np.asarray(matrix[rows], np.float32)
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
