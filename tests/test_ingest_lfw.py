"""Ingest on real faces from ../shared/data/lfw150 (skips when the folder is absent)."""

from __future__ import annotations

import os
import sys

import cv2
import duckdb
import numpy as np
import pytest
from PIL import Image

from tests.helpers import kill_when, manifest_snapshot, wb, wb_json
from workbench.faces.align import ARCFACE_TEMPLATE
from workbench.faces.detect import DlibDetector

pytestmark = [pytest.mark.lfw, pytest.mark.slow]


@pytest.fixture(scope="module")
def lfw_workspace(lfw_dir, tmp_path_factory):
    ws = tmp_path_factory.mktemp("lfw_ws")
    # dlib: the crops' eyes are measured by dlib below (YuNet's alignment is checked in test_detectors)
    summary = wb_json("ingest", str(lfw_dir), "-w", str(ws), "--workers", "2", "--detector", "dlib")
    return ws, summary


def test_at_least_97_percent_of_images_yield_a_primary_face(lfw_workspace):
    ws, summary = lfw_workspace
    con = duckdb.connect(str(ws / "manifests" / "wb.duckdb"), read_only=True)
    total, with_face = con.execute(
        "SELECT count(*), count(*) FILTER (n_faces >= 1) FROM wb_images").fetchone()
    assert total == summary["files_seen"] == 4906
    assert with_face / total >= 0.97


def test_crops_are_112_with_eyes_on_the_template(lfw_workspace):
    """Landmarks re-detected on the crops themselves (upsampled 2x) sit near the template."""
    ws, _ = lfw_workspace
    con = duckdb.connect(str(ws / "manifests" / "wb.duckdb"), read_only=True)
    paths = [r[0] for r in con.execute(
        "SELECT crop_path FROM wb_faces WHERE is_primary ORDER BY face_id LIMIT 200").fetchall()]
    detector = DlibDetector(threshold=-0.3)
    errors = []
    for path in paths:
        crop = np.asarray(Image.open(path).convert("RGB"))
        assert crop.shape == (112, 112, 3)
        big = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_CUBIC)
        found = detector.detect(big)
        if found:
            eyes = found[0].landmarks[:2] / 2.0
            errors.append(np.linalg.norm(eyes - ARCFACE_TEMPLATE[:2], axis=1).max())
    assert len(errors) >= 0.9 * len(paths)
    assert np.median(errors) < 3.0 and np.mean(np.array(errors) < 6.0) >= 0.95


def count_jpegs(root) -> int:
    return sum(1 for _ in (root / "crops").rglob("*.jpg")) if (root / "crops").exists() else 0


def test_kill_and_resume_on_real_faces_equals_a_clean_run(lfw_dir, tmp_path):
    subset = tmp_path / "subset"
    subset.mkdir()
    for name in sorted(os.listdir(lfw_dir))[:150]:
        os.symlink(lfw_dir / name, subset / name)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    wb("ingest", str(subset), "-w", str(clean), "--chunk-size", "32")
    cmd = [sys.executable, "-m", "workbench", "ingest", str(subset), "-w", str(killed),
           "--chunk-size", "32", "--workers", "2"]
    for threshold in (40, 120):
        kill_when(cmd, lambda t=threshold: count_jpegs(killed) >= t)
    final = wb_json("ingest", str(subset), "-w", str(killed), "--chunk-size", "32")
    assert final["already_ingested"] > 0
    assert manifest_snapshot(killed) == manifest_snapshot(clean)
