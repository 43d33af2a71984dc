"""`wb ingest` end to end on generated inputs, through the real CLI and manifest."""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from tests.conftest import noise_image
from tests.helpers import kill_when, manifest_snapshot, wb, wb_json
from workbench.manifest.workspace import Workspace


def query(root: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(root / "manifests" / "wb.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def write_bad_inputs(folder: Path) -> dict[str, str]:
    """One file per bad-input kind; returns file name -> expected reason (prefix)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    noise_image(50, (300, 300)).save(good, format="JPEG")
    cases = {
        "empty.jpg": (b"", "empty file"),
        "truncated.jpg": (good.getvalue()[:3000], "truncated or corrupt image"),
        "text.png": (b"hello, I am not a picture" * 20, "not an image"),
        "bomb.png": (None, "decompression bomb"),
        "tiny.png": (None, "too small (1x1)"),
        "flat_gray.png": (None, "no face"),
    }
    Image.new("1", (8000, 8000)).save(folder / "bomb.png")
    Image.new("RGB", (1, 1)).save(folder / "tiny.png")
    Image.new("L", (200, 200), 128).save(folder / "flat_gray.png")
    for name, (data, _) in cases.items():
        if data is not None:
            (folder / name).write_bytes(data)
    (folder / "notes.txt").write_text("ignored: not an image extension")
    return {name: expected for name, (_, expected) in cases.items()}


def test_bad_inputs_are_recorded_with_reasons_and_do_not_stop_the_run(tmp_path):
    expected = write_bad_inputs(tmp_path / "bad")
    noise_image(1, (200, 200)).save(tmp_path / "bad" / "scenery.jpg")
    summary = wb_json("ingest", str(tmp_path / "bad"), "-w", str(tmp_path / "ws"), "--workers", "2")
    rows = dict(query(tmp_path / "ws", "SELECT regexp_extract(path, '[^/]+$'), reason FROM wb_images"))
    for name, reason in expected.items():
        assert rows[name].startswith(reason), (name, rows[name])
    assert rows["scenery.jpg"] == "no face"
    assert summary["skipped_other"] == 1
    assert sum(summary["rejected"].values()) == len(expected) + 1


def test_nothing_readable_is_a_one_line_error(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    (folder / "b.png").write_bytes(b"garbage" * 10)
    proc = wb("ingest", str(folder), "-w", str(tmp_path / "ws"), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "nothing could be read" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_path_is_a_one_line_error(tmp_path):
    proc = wb("ingest", str(tmp_path / "nope"), "-w", str(tmp_path / "ws"), check=False)
    assert proc.returncode == 1 and "no such file or directory" in proc.stderr


def test_aligned_ingest_keeps_pixels_and_dedupes_exact_copies(aligned_folder, tmp_path):
    shutil.copy(aligned_folder / "id0" / "000.jpg", aligned_folder / "id1" / "copy_of_000.jpg")
    ws = tmp_path / "ws"
    summary = wb_json("ingest", str(aligned_folder), "--aligned", "-w", str(ws), "--source", "web")
    assert summary["new_images"] == 12 and summary["exact_duplicates"] == 1
    assert summary["faces"] == 12
    rows = query(ws, "SELECT i.image_id, i.path, i.n_locations, f.crop_path, i.source "
                     "FROM wb_images i JOIN wb_faces f USING (image_id)")
    assert len(rows) == 12
    for image_id, path, _n_locations, crop_path, source in rows:
        assert source == "web"
        assert Path(crop_path).read_bytes() == Path(path).read_bytes()
        assert image_id == __import__("hashlib").sha256(Path(path).read_bytes()).hexdigest()
        assert Image.open(crop_path).size == (112, 112)
    assert sorted(r[2] for r in rows) == [1] * 11 + [2]


def test_a_filesystem_uri_is_read_through_pyarrow_and_recorded_as_given(aligned_folder, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "remote"
    wb("ingest", str(aligned_folder), "--aligned", "-w", str(local))
    uri = aligned_folder.as_uri()
    summary = wb_json("ingest", uri, "--aligned", "-w", str(remote))
    assert summary["source"] == "aligned" and summary["new_images"] == 12
    paths = [r[0] for r in query(remote, "SELECT path FROM wb_files ORDER BY path")]
    assert paths == sorted(f"{uri}/id{i % 2}/{i:03d}.jpg" for i in range(12))
    for table in ("images", "faces"):
        assert manifest_snapshot(remote)[table] == manifest_snapshot(local)[table]
    assert wb_json("ingest", uri, "--aligned", "-w", str(remote))["already_ingested"] == 12
    bad = wb("ingest", "nosuchscheme://bucket/faces", "-w", str(tmp_path / "bad"), check=False)
    assert bad.returncode == 1 and "cannot open nosuchscheme://bucket/faces" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_rerun_adds_nothing_and_changed_files_are_reprocessed(aligned_folder, tmp_path):
    ws = tmp_path / "ws"
    wb("ingest", str(aligned_folder), "--aligned", "-w", str(ws))
    before = manifest_snapshot(ws)
    again = wb_json("ingest", str(aligned_folder), "--aligned", "-w", str(ws))
    assert again["already_ingested"] == 12 and again["new_images"] == 0
    assert manifest_snapshot(ws) == before
    noise_image(99).save(aligned_folder / "id0" / "000.jpg")
    changed = wb_json("ingest", str(aligned_folder), "--aligned", "-w", str(ws))
    assert changed["processed"] == 1 and changed["new_images"] == 1
    assert query(ws, "SELECT count(*) FROM wb_files")[0][0] == 12


def test_symlink_loop_terminates(aligned_folder, tmp_path):
    os.symlink(aligned_folder, aligned_folder / "id0" / "loop")
    summary = wb_json("ingest", str(aligned_folder), "--aligned", "-w", str(tmp_path / "ws"))
    assert summary["new_images"] == 12


def test_non_square_aligned_input_is_rejected(tmp_path):
    folder = tmp_path / "crops"
    folder.mkdir()
    noise_image(1, (112, 96)).save(folder / "wide.png")
    noise_image(2, (224, 224)).save(folder / "big.png")
    wb("ingest", str(folder), "--aligned", "-w", str(tmp_path / "ws"))
    reasons = dict(query(tmp_path / "ws", "SELECT regexp_extract(path, '[^/]+$'), reason FROM wb_images"))
    assert reasons == {"wide.png": "not an aligned crop (112x96)", "big.png": None}


def test_second_writer_gets_a_clear_error(aligned_folder, tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    with ws.lock("test holder"):
        proc = wb("ingest", str(aligned_folder), "--aligned", "-w", str(ws.root), check=False)
    assert proc.returncode == 1
    assert "in use by another wb process" in proc.stderr and "test holder" in proc.stderr
    assert not ws.manifest_path.exists()


def test_status_reports_counts_and_runs(aligned_folder, tmp_path):
    ws = tmp_path / "ws"
    write_bad_inputs(aligned_folder / "junk")
    wb("ingest", str(aligned_folder), "--aligned", "-w", str(ws), "--source", "crawl1")
    status = wb_json("status", "-w", str(ws))
    assert status["faces"] == 13  # 12 crops + the flat gray square, accepted as a crop
    assert status["by_source"][0]["source"] == "crawl1"
    reasons = {r["reason"] for r in status["rejected_by_reason"]}
    assert "empty file" in reasons and "not an image" in reasons
    assert status["last_runs"][0]["command"] == "ingest" and status["last_runs"][0]["status"] == "ok"
    table = wb("status", "-w", str(ws)).stdout
    assert "crawl1" in table and "empty file" in table


def test_status_without_manifest_is_a_one_line_error(tmp_path):
    proc = wb("status", "-w", str(tmp_path), check=False)
    assert proc.returncode == 1 and "no manifest" in proc.stderr


def make_many_crops(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png", compress_level=1)


def count_crops(root: Path) -> int:
    return sum(1 for _ in (root / "crops").rglob("*.png")) if (root / "crops").exists() else 0


@pytest.mark.slow
def test_sigkill_at_any_moment_then_rerun_equals_a_clean_run(tmp_path):
    folder = tmp_path / "crops"
    make_many_crops(folder, 2000)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    wb("ingest", str(folder), "--aligned", "-w", str(clean), "--chunk-size", "64")
    cmd = [sys.executable, "-m", "workbench", "ingest", str(folder), "--aligned",
           "-w", str(killed), "--chunk-size", "64", "--workers", "2"]
    for threshold in (150, 700, 1300):  # kill mid-chunk, at different depths
        kill_when(cmd, lambda t=threshold: count_crops(killed) >= t)
    final = wb_json("ingest", str(folder), "--aligned", "-w", str(killed), "--chunk-size", "64")
    assert 0 < final["already_ingested"] < 2000
    assert manifest_snapshot(killed) == manifest_snapshot(clean)
    runs = dict(query(killed, "SELECT status, count(*) FROM wb_runs GROUP BY status"))
    assert runs == {"ok": 1, "killed": 3}


def test_detectors_are_never_mixed_silently():
    from workbench.errors import WorkbenchError
    from workbench.ingest.pipeline import check_one_detector

    con = duckdb.connect()
    con.execute("CREATE TABLE faces (detector VARCHAR, det_score REAL)")
    # An aligned face (no detector) and one detected before keys were recorded (dlib, then).
    con.execute("INSERT INTO faces VALUES (NULL, NULL), (NULL, 0.5)")
    check_one_detector(con, "dlib-0123456789ab")
    with pytest.raises(WorkbenchError, match="came from dlib"):
        check_one_detector(con, "yunet-0123456789ab")
    con.execute("INSERT INTO faces VALUES ('scrfd-aaaaaaaaaaaa', 0.9), ('scrfd-aaaaaaaaaaaa', 0.8)")
    with pytest.raises(WorkbenchError, match="2 detected faces came from scrfd-aaaaaaaaaaaa"):
        check_one_detector(con, "dlib-0123456789ab")
