"""Vectors in and out (`wb embed --export`, `wb embed --import`): another workspace importing the
vectors makes the same curation decisions, and every malformed file is refused whole."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import curated_workspace, manifest_rows, wb, wb_json

pytestmark = pytest.mark.slow

DECISIONS = "SELECT face_id, decision FROM wb_overlap ORDER BY face_id"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    ws = curated_workspace(root, identities=6, per_identity=4, web=16, prefix="tr", seed=5)
    result = wb_json("embed", "--export", str(root / "vectors.parquet"), "-w", str(ws))
    return root, ws, result


def _fresh(root, tmp_path):
    ws = tmp_path / "ws2"
    wb("ingest", str(root / "web"), "--aligned", "-w", str(ws))
    wb("labeled", "add", "gen", str(root / "labeled"), "--aligned", "-w", str(ws))
    return ws


def test_exported_vectors_give_another_workspace_the_same_decisions(exported, tmp_path):
    root, ws, result = exported
    assert result["faces"] == 16 and result["labeled_samples"] == 24 and result["dim"] == 128
    table = pq.read_table(root / "vectors.parquet")
    assert set(table.column_names) == {"face_id", "set_name", "sample_idx", "locator", "vector"}
    ws2 = _fresh(root, tmp_path)
    imported = wb_json("embed", "--import", str(root / "vectors.parquet"), "--model-name", "dlib-elsewhere",
                       "-w", str(ws2))
    assert (imported["faces"], imported["labeled_samples"], imported["stored_now"]) == (16, 24, 40)
    again = wb_json("embed", "--import", str(root / "vectors.parquet"), "--model-name", "dlib-elsewhere",
                    "-w", str(ws2))
    assert again["stored_now"] == 0  # a re-import is a no-op
    wb("overlap", "--labeled", "gen", "--model", "imported:dlib-elsewhere", "--per-identity", "4",
       "-w", str(ws2))
    assert manifest_rows(ws2, DECISIONS) == manifest_rows(ws, DECISIONS)
    listed = manifest_rows(ws2, "SELECT count(face_id), count(sample_idx), count(DISTINCT set_name) "
                                "FROM wb_embeddings WHERE model_kind = 'import'")
    assert listed == [(16, 24, 1)]
    # an imported model computes nothing: a face without an imported vector is a one-line error
    wb("ingest", str(root / "labeled" / "tr0"), "--aligned", "-w", str(ws2))
    proc = wb("embed", "--model", "imported:dlib-elsewhere", "-w", str(ws2), check=False)
    assert proc.returncode == 1 and "have no vector under the imported model" in proc.stderr


def _write(path, columns: dict) -> None:
    pq.write_table(pa.table(columns), path)


@pytest.mark.parametrize(("change", "message"), [
    ("dim", "vectors of 64 to 128 dimensions; every row needs the same"),
    ("nan", "vectors are NaN, infinite or all zero"),
    ("zero", "vectors are NaN, infinite or all zero"),
    ("duplicate", "keys appear more than once"),
    ("cross-key", "keys appear more than once"),  # one sample named by sample_idx, again by locator
    ("unmatched", "of 40 rows match a face or a registered labeled sample"),
    ("nokey", "rows need a key"),
    ("text", "'vector' must be a list of numbers (it is string)"),
])
def test_a_bad_file_is_refused_whole(exported, tmp_path, change, message):
    root, _, _ = exported
    ws2 = _fresh(root, tmp_path)
    good = pq.read_table(root / "vectors.parquet").to_pydict()
    wb("embed", "--import", str(root / "vectors.parquet"), "--model-name", "m", "-w", str(ws2))
    before = manifest_rows(ws2, "SELECT count(*) FROM embeddings")
    bad = {k: list(v) for k, v in good.items()}
    if change == "dim":
        bad["vector"][5] = bad["vector"][5][:64]
    elif change == "nan":
        bad["vector"][3] = [float("nan")] * 128
    elif change == "zero":
        bad["vector"][3] = [0.0] * 128
    elif change == "duplicate":
        bad = {k: v + v[:1] for k, v in bad.items()}
    elif change == "cross-key":
        row = next(i for i, name in enumerate(bad["set_name"]) if name is not None)
        bad = {k: [*v, None if k == "sample_idx" else v[row]] for k, v in bad.items()}
    elif change == "unmatched":
        bad["face_id"][0] = "no-such-face"
    elif change == "text":
        bad["vector"] = [",".join(map(str, v)) for v in bad["vector"]]
    else:
        bad = {"vector": bad["vector"]}
    path = tmp_path / "bad.parquet"
    vector_type = pa.string() if change == "text" else pa.list_(pa.float32())
    _write(path, {k: pa.array(v, vector_type) if k == "vector" else v for k, v in bad.items()})
    name = f"other-{change}"
    proc = wb("embed", "--import", str(path), "--model-name", name, "-w", str(ws2), check=False)
    assert proc.returncode == 1 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert manifest_rows(ws2, "SELECT count(*) FROM embeddings") == before
    # nothing written: the refused file's vectors are not left in the workspace either
    assert [p.name for p in (ws2 / "embeddings").iterdir() if p.name.startswith(f"import-{name}-")] == []


def test_a_name_is_bound_to_one_file(exported, tmp_path):
    root, _, _ = exported
    ws2 = _fresh(root, tmp_path)
    wb("embed", "--import", str(root / "vectors.parquet"), "--model-name", "mine", "-w", str(ws2))
    table = pq.read_table(root / "vectors.parquet")
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    flipped = table.set_column(table.schema.get_field_index("vector"), "vector",
                               pa.array(list(-vectors), pa.list_(pa.float32())))
    pq.write_table(flipped, tmp_path / "other.parquet")
    proc = wb("embed", "--import", str(tmp_path / "other.parquet"), "--model-name", "mine", "-w", str(ws2),
              check=False)
    assert proc.returncode == 1 and "bound to another file's vectors" in proc.stderr


@pytest.mark.parametrize("batched", [False, True], ids=["row-groups", "large-groups-in-batches"])
def test_vectors_are_paired_with_their_keys_across_row_groups(exported, tmp_path, monkeypatch, batched):
    """The vectors (decoded a row group ahead on threads) and the keys (joined by DuckDB) travel apart
    and meet by row position: in a shuffled file of many small row groups, read in pieces that
    straddle them, every item still gets its own row's vector."""
    from workbench.embed import transfer
    from workbench.embed.store import read_vectors
    from workbench.formats import parquet_vectors
    from workbench.labeled import registry
    from workbench.manifest.workspace import Workspace

    root, _, _ = exported
    table = pq.read_table(root / "vectors.parquet")
    table = table.take(np.random.default_rng(3).permutation(len(table)))
    path = tmp_path / "shuffled.parquet"
    pq.write_table(table, path, row_group_size=7)
    monkeypatch.setattr(transfer, "CHUNK", 3)
    if batched:  # every row group counts as too large to hold: read in batches of 4
        monkeypatch.setattr(parquet_vectors, "GROUP_BYTES", 1)
        monkeypatch.setattr(parquet_vectors, "BATCH_ROWS", 4)
    ws = Workspace.at(_fresh(root, tmp_path))
    result = transfer.run_import(ws, path, "shuffled")
    assert (result.rows, result.stored_now) == (40, 40)
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = table.to_pydict()
    with ws.connect(read_only=True) as con:
        items = [f if f is not None else registry.get(con, s).item_id(i)
                 for f, s, i in zip(rows["face_id"], rows["set_name"], rows["sample_idx"], strict=True)]
        found, stored = read_vectors(ws, con, result.model_key, items)
    assert found.all()
    np.testing.assert_allclose(stored, vectors, atol=1e-6)
