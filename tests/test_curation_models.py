"""The curation loop with real pretrained models: YuNet detection, MobileFaceNet embeddings,
calibrated overlap (copies of labeled photos included) and dedupe, through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED, shared_model
from tests.helpers import manifest_rows, wb, wb_json
from workbench.faces.copies import edit_photo

CELEBA200 = SHARED / "data" / "celeba200"
CELEBA10K = SHARED / "data" / "celeba10k"


@pytest.fixture(scope="module")
def celeba(tmp_path_factory) -> dict[str, Path]:
    """12 labeled identities; a web folder of one downscaled copy of a photo of each, and 40
    small faces of people not in S."""
    if not CELEBA200.is_dir() or not (CELEBA10K / "labels.csv").is_file():
        pytest.skip(f"CelebA faces not found under {SHARED / 'data'}")
    root = tmp_path_factory.mktemp("celeba")
    labeled, web = root / "labeled", root / "web"
    web.mkdir()
    people = sorted(p.name for p in CELEBA200.iterdir())[:12]
    for person in people:
        (labeled / person).mkdir(parents=True)
        photos = sorted((CELEBA200 / person).iterdir())
        for photo in photos:
            (labeled / person / photo.name).symlink_to(photo)
        Image.open(photos[3]).resize((89, 109)).save(web / f"copy_{person}.jpg", quality=85)
    known = {p.name for p in CELEBA200.iterdir()}
    with open(CELEBA10K / "labels.csv") as handle:
        strangers = [r["file"] for r in csv.DictReader(handle) if r["identity"] not in known][:40]
    for name in strangers:
        (web / name).symlink_to(CELEBA10K / "images" / name)
    return {"root": root, "labeled": labeled, "web": web,
            "yunet": shared_model("yunet_s_640_640.onnx"), "mbf": shared_model("mobilefacenet_128d.onnx")}


@pytest.mark.slow
def test_calibrated_curation_with_real_models(celeba):
    ws = str(celeba["root"] / "ws")
    detector, model = f"yunet:{celeba['yunet']}", f"onnx:{celeba['mbf']}"
    wb("labeled", "add", "S", str(celeba["labeled"]), "--detector", detector, "-w", ws)
    ingested = wb_json("ingest", str(celeba["web"]), "--detector", detector, "-w", ws)
    assert ingested["new_images"] == 52 and ingested["faces"] >= 52 and ingested["hints"] == []
    detectors = manifest_rows(ws, "SELECT DISTINCT detector FROM wb_faces")
    assert len(detectors) == 1 and detectors[0][0].startswith("yunet-")

    # Another detector in the same workspace is refused in one line, and nothing is added
    # (leaving --detector out uses the workspace's own).
    other = celeba["root"] / "more"
    other.mkdir()
    Image.open(next(celeba["labeled"].glob("*/*.jpg"))).save(other / "x.jpg")
    refused = wb("ingest", str(other), "--detector", "dlib", "-w", ws, check=False)
    assert refused.returncode == 1 and "detector" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert manifest_rows(ws, "SELECT count(*) FROM wb_faces")[0][0] == ingested["faces"]

    calibration = wb_json("calibrate", "--model", model, "-w", ws)
    overlap_cal, dedupe_cal = calibration["overlap"], calibration["dedupe"]
    assert overlap_cal["identities"] == 12 and overlap_cal["unknown_probes"] == 120  # 10 sampled per identity
    assert overlap_cal["ambiguous_from"] <= overlap_cal["threshold"] <= overlap_cal["same_photo_from"]
    assert overlap_cal["known_recall"] > 0.9 and overlap_cal["measured_fpir"] <= 0.01
    assert dedupe_cal["loose"] <= dedupe_cal["strict"] and dedupe_cal["merge_rate"] <= 0.02
    # copies made from S's photos share their surroundings, as web copies do (made from the
    # aligned crops, whose mirrored border is all the surroundings they have: 0.6-0.7)
    assert dedupe_cal["context_recall"] >= 0.85
    assert manifest_rows(ws, "SELECT count(*) FROM wb_calibrations")[0][0] == 2

    summary = wb_json("overlap", "--labeled", "S", "--model", model, "-w", ws)
    assert summary["calibration"]["threshold"] == overlap_cal["threshold"]  # reused, not redone
    assert manifest_rows(ws, "SELECT count(*) FROM wb_calibrations")[0][0] == 2
    decided = manifest_rows(ws, """
        SELECT regexp_extract(i.path, '[^/]+$'), o.decision, o.nearest_identity, o.copy_of,
               s.identity
        FROM wb_overlap o JOIN wb_faces f USING (face_id) JOIN wb_images i USING (image_id)
        LEFT JOIN wb_labeled_samples s ON s.set_name = o.labeled_set AND s.sample_idx = o.copy_of_sample_idx
        WHERE f.is_primary""")
    copies = [r for r in decided if r[0].startswith("copy_")]
    strangers = [r for r in decided if not r[0].startswith("copy_")]
    assert len(copies) == 12
    # Every copy is excluded under its own identity, naming the labeled photo it matches; it is
    # called a `copy` when closer than other photos of that person come (CelebA has many
    # near-identical shots of one person, so the bar is high).
    for name, decision, identity, copy_of, copied_identity in copies:
        assert decision in ("copy", "overlap") and identity == name[len("copy_"):-4]
        assert copy_of is not None and copied_identity == identity
    assert sum(r[1] != "clean" for r in strangers) <= 2

    dedupe = wb_json("dedupe", "--model", model, "-w", ws)
    assert dedupe["thresholds_mode"] == "calibrated on S" and dedupe["strict"] == dedupe_cal["strict"]
    split = wb_json("split", "-w", ws)
    reasons = split["excluded_by_reason"]
    assert reasons.get("copy of a labeled photo", 0) + reasons.get("overlap", 0) >= 12


def test_dlib_missing_small_faces_tells_the_user_what_to_try(tmp_path):
    if not (CELEBA10K / "images").is_dir():
        pytest.skip(f"small faces not found at {CELEBA10K}")
    web = tmp_path / "web"
    web.mkdir()
    for path in sorted((CELEBA10K / "images").iterdir())[:25]:
        (web / path.name).symlink_to(path)
    proc = wb("ingest", str(web), "-w", str(tmp_path / "ws"), "--detector", "dlib", "--json")
    hints = json.loads(proc.stdout)["hints"]
    assert len(hints) == 1 and "--detector yunet" in hints[0] and "--upsample 1" in hints[0]


@pytest.mark.slow
def test_reframed_copies_of_small_photos_are_grouped_by_their_context(tmp_path):
    """Copies of 89x109 web photos, cut, rescaled, toned and saved at low quality at once, whose
    embeddings and hashes drift: `wb dedupe` groups each with its photo by the context rule alone
    (the embedding rules fixed out of reach), merges no two photos, and in a workspace whose faces
    predate context thumbnails says how many lack them."""
    if not (CELEBA10K / "labels.csv").is_file():
        pytest.skip(f"small faces not found at {CELEBA10K}")
    yunet, mbf = shared_model("yunet_s_640_640.onnx"), shared_model("mobilefacenet_128d.onnx")
    web = tmp_path / "web"
    web.mkdir()
    with open(CELEBA10K / "labels.csv") as handle:
        names = [row["file"] for row in csv.DictReader(handle)][100:130]
    rng = np.random.default_rng(1)
    for n, name in enumerate(names):
        (web / name).symlink_to(CELEBA10K / "images" / name)
        if n < 10:
            rgb = np.asarray(Image.open(CELEBA10K / "images" / name).convert("RGB"))
            Image.fromarray(edit_photo(rgb, "mixed", rng)).save(web / f"copy_{name}", quality=95)
    ws = str(tmp_path / "ws")
    assert wb_json("ingest", str(web), "--detector", f"yunet:{yunet}", "-w", ws)["new_images"] == 40
    context_only = ("--strict", "1", "--loose", "1", "--phash-bits", "0", "--context", "0.965")
    summary = wb_json("dedupe", "--model", f"onnx:{mbf}", *context_only, "-w", ws)
    assert summary["context"] == 0.965 and summary["without_context"] == 0
    groups = dict(manifest_rows(ws, """
        SELECT regexp_extract(i.path, '[^/]+$'), d.group_id FROM wb_dups d
        JOIN wb_faces f USING (face_id) JOIN wb_images i USING (image_id) WHERE f.is_primary"""))
    found = [groups[f"copy_{name}"] == groups[name] for name in names[:10]]
    assert sum(found) >= 9
    assert len({groups[name] for name in names}) == 30  # no two photos merged

    con = duckdb.connect(str(tmp_path / "ws" / "manifests" / "wb.duckdb"))
    con.execute("UPDATE faces SET context = NULL")
    con.close()
    before = wb_json("dedupe", "--model", f"onnx:{mbf}", *context_only, "-w", ws)
    assert before["without_context"] == summary["faces"] and before["duplicates"] < summary["duplicates"]
    assert any("before context thumbnails" in w for w in before["warnings"])
