"""Export round trips, forget with a workspace scan, and the generated data card."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

from tests.helpers import curated_workspace, wb, wb_json


@pytest.fixture(scope="module")
def base_ws(tmp_path_factory) -> Path:
    return curated_workspace(tmp_path_factory.mktemp("gov"), identities=6, per_identity=4, web=20,
                             prefix="person", seed=300, source="webA")


@pytest.fixture()
def ws(base_ws, tmp_path) -> Path:
    copy = tmp_path / "ws"
    shutil.copytree(base_ws, copy)
    return copy


def query(ws: Path, sql: str, params=None) -> list[tuple]:
    con = duckdb.connect(str(ws / "manifests" / "wb.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["rec", "folder", "hf"])
def test_export_then_register_gives_the_same_identities_and_pixels(ws, tmp_path, fmt):
    out = tmp_path / f"export_{fmt}"
    summary = wb_json("export", "--split", "train_unlabeled", "--format", fmt, "--out", str(out),
                      "--labels", "clusters", "-w", str(ws))
    assert (out / "manifest.csv").exists() and summary["faces"] > 0
    path = out / "dataset" if fmt == "hf" else out
    registered = wb_json("labeled", "add", f"back_{fmt}", str(path), "--aligned", "-w", str(ws))
    assert (registered["identities"], registered["images"]) == (summary["identities"], summary["faces"])
    crops = {hashlib.sha256(Path(p).read_bytes()).hexdigest() for (p,) in query(
        ws, "SELECT f.crop_path FROM wb_splits s JOIN wb_faces f USING (face_id) "
            "WHERE s.split = 'train_unlabeled'")}
    manifest = (out / "manifest.csv").read_text().splitlines()[1:]
    assert {line.split(",")[3] for line in manifest} == crops
    assert query(ws, "SELECT count(*) FROM wb_exports")[0][0] == 1


def test_forget_an_image_leaves_no_trace(ws, tmp_path):
    wb_json("export", "--split", "train_unlabeled", "--format", "folder", "--out", str(tmp_path / "x"),
            "-w", str(ws))
    face_id, image_id, crop = query(ws, "SELECT f.face_id, f.image_id, f.crop_path FROM wb_splits s "
                                        "JOIN wb_faces f USING (face_id) WHERE s.split = 'train_unlabeled' "
                                        "ORDER BY 1 LIMIT 1")[0]
    matrix = next((ws / "embeddings").rglob("vectors.f32"))
    vectors = np.memmap(matrix, dtype="<f4", mode="r").reshape(-1, 128)
    (row,) = query(ws, "SELECT row FROM embeddings WHERE item_id = ?", [face_id])[0]
    secret_vector = bytes(np.asarray(vectors[row]).tobytes())
    del vectors
    dry = wb_json("forget", "--image", image_id, "--dry-run", "-w", str(ws))
    assert dry["faces"] == 1
    assert query(ws, "SELECT count(*) FROM faces WHERE face_id = ?", [face_id])[0][0] == 1
    result = wb_json("forget", "--image", image_id, "--reason", "subject request", "-w", str(ws))
    assert result["faces"] == 1 and len(result["stale_exports"]) == 1
    assert not Path(crop).exists()
    for path in ws.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert image_id.encode() not in data, path
            assert face_id.encode() not in data, path
            assert secret_vector not in data, path
    tomb = query(ws, "SELECT request, reason, images, faces, stale_exports FROM wb_erasures")
    assert tomb == [("image", "subject request", 1, 1, 1)]
    assert query(ws, "SELECT stale FROM wb_exports")[0][0] is True
    assert wb_json("status", "-w", str(ws))["images"] == 19


def test_forgets_without_compaction_leave_no_trace_after_one_compact(ws):
    """Erased at once from every table; the bytes go with the one rewrite `wb compact` makes."""
    rows = query(ws, "SELECT f.face_id, f.image_id FROM wb_faces f ORDER BY 1 LIMIT 2")
    for _, image_id in rows:
        result = wb_json("forget", "--image", image_id, "--no-compact", "-w", str(ws))
        assert result["faces"] == 1 and result["compaction"].startswith("pending")
        assert query(ws, "SELECT count(*) FROM wb_images WHERE image_id = ?", [image_id])[0][0] == 0
    status = wb("status", "-w", str(ws))
    assert "2 erasure(s) are gone from every table" in status.stderr
    done = wb_json("compact", "-w", str(ws))
    assert done["erasures"] == 2 and done["bytes_after"] > 0
    for path in ws.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for face_id, image_id in rows:
                assert image_id.encode() not in data and face_id.encode() not in data, path
    assert "erasure(s)" not in wb("status", "-w", str(ws)).stderr


def test_forget_an_identity_removes_labeled_faces_and_centres(ws):
    before = query(ws, "SELECT count(*) FROM wb_labeled_samples WHERE identity = 'person2'")[0][0]
    result = wb_json("forget", "--identity", "person2", "-w", str(ws))
    assert result["labeled_samples"] == before == 4
    assert query(ws, "SELECT count(*) FROM wb_labeled_samples WHERE identity = 'person2'")[0][0] == 0
    assert query(ws, "SELECT count(*) FROM centres")[0][0] == 0
    for path in (ws / "manifests").iterdir():
        assert b"person2" not in path.read_bytes()


def test_card_is_idempotent_and_keeps_hand_written_text(ws):
    card = ws / "DATA_CARD.md"
    card.write_text("# Our faces\n\nCollected under agreement 42.\n")
    assert wb_json("card", "-w", str(ws))["changed"] is True
    first = card.read_text()
    assert first.startswith("# Our faces\n\nCollected under agreement 42.\n")
    assert "webA" in first and "Overlap with gen" in first and "train_unlabeled" in first
    assert wb_json("card", "-w", str(ws))["changed"] is False
    assert card.read_text() == first


def test_forget_under_a_path_with_an_apostrophe_compacts_the_manifest(base_ws, tmp_path):
    ws = tmp_path / "it's a workspace"
    shutil.copytree(base_ws, ws)
    (image_id,) = query(ws, "SELECT image_id FROM wb_images WHERE status = 'ok' ORDER BY 1 LIMIT 1")[0]
    result = wb_json("forget", "--image", image_id, "-w", str(ws))
    assert result["images"] == 1
    for path in (ws / "manifests").iterdir():
        assert image_id.encode() not in path.read_bytes(), path
    assert not (ws / "manifests" / "wb.compact.duckdb").exists()
    (status,) = query(ws, "SELECT status FROM runs WHERE command = 'forget'")[0]
    assert status == "ok"


@pytest.mark.parametrize("option, value", [("--identity", "nobody"), ("--source", "nowhere"),
                                           ("--image", "notahash")])
def test_forget_of_nothing_says_so_and_writes_no_tombstone(ws, option, value):
    proc = wb("forget", option, value, "-w", str(ws), check=False)
    assert proc.returncode == 1 and "nothing erased" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert query(ws, "SELECT count(*) FROM wb_erasures")[0][0] == 0


def test_export_onto_an_existing_file_is_a_one_line_error(ws, tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    proc = wb("export", "--split", "train_unlabeled", "--format", "folder", "--out", str(target), "-w",
              str(ws), check=False)
    assert proc.returncode == 1 and "not an empty folder" in proc.stderr
    assert "Traceback" not in proc.stderr and target.read_text() == "not a folder"


@pytest.mark.parametrize("where", [
    "1=0) UNION ALL SELECT face_id, image_id, content, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
    "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM read_text('/etc/passwd'), "
    "wb_faces WHERE (1=1",
    "1=0 UNION ALL SELECT * FROM face_facts",
    "face_id IN (SELECT face_id FROM faces)",
    "getenv('HOME') IS NOT NULL",
    "quality > 0.5; DROP TABLE faces",
])
def test_browse_where_is_one_condition_over_the_face_columns(ws, where):
    from workbench.browse.selection import face_facts
    from workbench.errors import WorkbenchError
    from workbench.manifest.workspace import Workspace

    with Workspace.at(ws).connect(read_only=True) as con:
        allowed = face_facts(con, where="split = 'excluded' AND quality >= 0", score_run=None)
        assert 0 < allowed.num_rows < query(ws, "SELECT count(*) FROM wb_faces")[0][0]
        with pytest.raises(WorkbenchError) as info:
            face_facts(con, where=where, score_run=None)
    assert "\n" not in str(info.value)
    assert query(ws, "SELECT count(*) FROM faces")[0][0] > 0
