"""Labeled sets from real faces in ../shared/data/lfw150 (skips when absent)."""

from __future__ import annotations

import os

import duckdb
import pytest
from PIL import Image

from tests.helpers import wb_json

pytestmark = [pytest.mark.lfw, pytest.mark.slow]


def test_folder_and_hf_registrations_of_lfw150_agree(lfw_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    identities = sorted(os.listdir(lfw_dir))
    rows = {"image": [], "label": []}
    for label, identity in enumerate(identities):
        for name in sorted(os.listdir(lfw_dir / identity)):
            path = lfw_dir / identity / name
            rows["image"].append({"bytes": path.read_bytes(), "path": name})
            rows["label"].append(label)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=identities)})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "lfw_hf"))
    ws = str(tmp_path / "ws")
    folder = wb_json("labeled", "add", "lfw", str(lfw_dir), "--aligned", "-w", ws)
    hf = wb_json("labeled", "add", "lfw_hf", str(tmp_path / "lfw_hf"), "--aligned", "-w", ws)
    assert (folder["identities"], folder["images"]) == (2673, 4906)
    assert (hf["identities"], hf["images"]) == (2673, 4906)
    con = duckdb.connect(str(tmp_path / "ws" / "manifests" / "wb.duckdb"), read_only=True)
    per_identity = con.execute(
        "SELECT a.identity, a.n_images, b.n_images FROM wb_labeled_identities a "
        "JOIN wb_labeled_identities b ON a.identity = b.identity "
        "WHERE a.set_name = 'lfw' AND b.set_name = 'lfw_hf'").fetchall()
    assert len(per_identity) == 2673 and all(a == b for _, a, b in per_identity)


def test_unaligned_registration_detects_and_aligns(lfw_dir, tmp_path):
    subset = tmp_path / "subset"
    subset.mkdir()
    for name in sorted(os.listdir(lfw_dir))[:60]:
        os.symlink(lfw_dir / name, subset / name)
    summary = wb_json("labeled", "add", "lfw60", str(subset), "-w", str(tmp_path / "ws"),
                      "--workers", "2")
    assert summary["aligned"] is False and summary["identities"] == 60
    total = summary["images"] + sum(summary["rejected"].values())
    assert summary["images"] >= 0.97 * total
    con = duckdb.connect(str(tmp_path / "ws" / "manifests" / "wb.duckdb"), read_only=True)
    crops = [r[0] for r in con.execute(
        "SELECT crop_path FROM wb_labeled_samples WHERE status = 'ok'").fetchall()]
    assert len(crops) == summary["images"]
    assert all(Image.open(c).size == (112, 112) for c in crops)
