"""A labeled set is a registration, not a name: regressions of issue #24 through the CLI on real
faces (CelebA, YuNet, MobileFaceNet), and the detector record."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED, shared_model
from tests.helpers import manifest_rows, wb, wb_json
from workbench.embed.models import ModelSpec, load_embedder
from workbench.errors import WorkbenchError
from workbench.faces.detectors import DetectorSpec
from workbench.formats.images import decode_crop

CELEBA = SHARED / "data" / "celeba200"
pytestmark = pytest.mark.slow


def _people(n_skip: int, n: int) -> list[Path]:
    if not CELEBA.is_dir():
        pytest.skip(f"real faces not found at {CELEBA}")
    return sorted(p for p in CELEBA.iterdir() if p.is_dir())[n_skip : n_skip + n]


def _labeled(out: Path, people: list[Path], photos: slice) -> Path:
    for person in people:
        (out / person.name).mkdir(parents=True)
        for image in sorted(person.iterdir())[photos]:
            shutil.copy(image, out / person.name / image.name)
    return out


def _web(out: Path, people: list[Path], photos: slice) -> Path:
    out.mkdir(parents=True)
    for person in people:
        for image in sorted(person.iterdir())[photos]:
            shutil.copy(image, out / f"{person.name}_{image.name}")
    return out


@pytest.fixture
def models() -> tuple[str, str]:
    return f"yunet:{shared_model('yunet_s_640_640.onnx')}", f"onnx:{shared_model('mobilefacenet_128d.onnx')}"


def _found(ws: Path, web_people: list[Path]) -> int:
    """Web photos of the labeled people that overlap flagged (any decision but clean)."""
    rows = manifest_rows(ws, "SELECT f.path, o.decision FROM wb_overlap o JOIN faces USING (face_id) "
                             "JOIN files f USING (image_id)")
    names = {p.name for p in web_people}
    return sum(Path(path).name.split("_")[0] in names and decision != "clean" for path, decision in rows)


def test_a_set_registered_again_under_its_name_never_meets_the_old_vectors(tmp_path, models):
    detector, model = models
    a_people, b_people = _people(0, 4), _people(4, 4)
    a = _labeled(tmp_path / "A", a_people, slice(0, 8))
    b = _labeled(tmp_path / "B", b_people, slice(0, 8))
    web = _web(tmp_path / "web", b_people, slice(20, 24))
    ws = str(tmp_path / "ws")
    wb("ingest", str(web), "--detector", detector, "-w", ws)
    wb("labeled", "add", "S", str(a), "-w", ws)
    wb("overlap", "--labeled", "S", "--model", model, "-w", ws)
    refused = wb("labeled", "add", "S", str(b), "-w", ws, check=False)
    assert refused.returncode == 1 and "--replace" in refused.stderr
    removed = wb("labeled", "remove", "S", "-w", ws).stdout
    assert "centres" in removed and "embeddings" in removed
    wb("labeled", "add", "S", str(b), "-w", ws)
    wb("overlap", "--labeled", "S", "--model", model, "-w", ws)
    fresh_ws = str(tmp_path / "fresh")
    wb("ingest", str(web), "--detector", detector, "-w", fresh_ws)
    wb("labeled", "add", "S", str(b), "-w", fresh_ws)
    wb("overlap", "--labeled", "S", "--model", model, "-w", fresh_ws)
    decisions = "SELECT f.path, o.decision FROM wb_overlap o JOIN faces USING (face_id) JOIN files f " \
                "USING (image_id) ORDER BY 1"
    # the same decisions as a workspace that never saw A (0 of 16 found when A's vectors were reused)
    assert manifest_rows(ws, decisions) == manifest_rows(fresh_ws, decisions)
    assert _found(Path(ws), b_people) >= 10
    # every stored vector of the new registration is a fresh embedding of its crop
    reg = manifest_rows(ws, "SELECT registration FROM labeled_sets WHERE name = 'S'")[0][0]
    stored = manifest_rows(ws, "SELECT e.item_id, e.row, s.crop_path FROM embeddings e "
                               "JOIN wb_labeled_samples s ON e.item_id = 'S:' || ? || ':' || s.sample_idx "
                               "WHERE s.set_name = 'S'", [reg])
    assert stored
    spec = ModelSpec.parse(model)
    matrix = np.fromfile(Path(ws) / "embeddings" / spec.key / "vectors.f32", "<f4").reshape(-1, 128)
    fresh = load_embedder(spec).embed(np.stack([decode_crop(Path(p).read_bytes()) for _, _, p in stored]))
    assert np.allclose(matrix[[r for _, r, _ in stored]], fresh, atol=1e-4)
    # nothing refers to the removed registration
    for table in ("centres", "calibrations", "overlap"):
        assert manifest_rows(ws, f"SELECT count(*) FROM {table} WHERE registration <> ?", [reg]) == [(0,)]
    # --replace drops the old registration's derived facts in the same step
    wb("labeled", "add", "S", str(a), "--replace", "-w", ws)
    assert manifest_rows(ws, "SELECT count(*) FROM embeddings WHERE starts_with(item_id, 'S:' || ? || ':')",
                         [reg]) == [(0,)]
    assert manifest_rows(ws, "SELECT count(*) FROM overlap") == [(0,)]


def test_the_workspace_detector_is_the_default_and_an_audit_against_a_folder_uses_the_sets(tmp_path, models):
    detector, model = models
    people = _people(8, 3)
    s = _labeled(tmp_path / "S", people, slice(0, 6))
    evaluation = _labeled(tmp_path / "E", _people(11, 2), slice(0, 4))
    web = _web(tmp_path / "web", people, slice(10, 11))
    ws = str(tmp_path / "ws")
    wb("ingest", str(web), "--detector", detector, "-w", ws)
    added = wb_json("labeled", "add", "S", str(s), "-w", ws)
    yunet = DetectorSpec.parse(detector).key
    assert added["detector"] == yunet and added["notes"] == []  # the workspace's, not dlib's
    assert yunet in wb("labeled", "list", "-w", ws).stdout
    other = wb("labeled", "add", "T", str(s), "--detector", "dlib", "-w", ws).stdout
    assert "not the workspace's" in other
    refused = wb("ingest", str(web), "--detector", "dlib", "-w", ws, check=False)
    assert refused.returncode == 1 and yunet in refused.stderr
    audited = wb_json("audit", "labeled", "S", "--model", model, "--against", str(evaluation), "-w", ws)
    assert audited["against"] == ["eval-E"]
    assert manifest_rows(ws, "SELECT json_extract_string(options, '$.detector') FROM labeled_sets "
                             "WHERE name = 'eval-E'") == [(yunet,)]


def test_forgetting_a_person_reaches_the_cleaned_copies(tmp_path, models):
    detector, model = models
    people = _people(13, 3)
    s = _labeled(tmp_path / "S", people, slice(0, 6))
    ws = str(tmp_path / "ws")
    wb("labeled", "add", "S", str(s), "--detector", detector, "-w", ws)
    wb("audit", "labeled", "S", "--model", model, "-w", ws)
    for fmt in ("folder", "rec"):
        wb("labeled", "clean", "S", "--out", str(tmp_path / fmt), "--format", fmt, "--name", f"S-{fmt}",
           "-w", ws)
    wb("labeled", "clean", "S-folder", "--out", str(tmp_path / "again"), "--format", "folder",
       "--name", "S-again", "-w", ws, check=False)  # not audited: refused, nothing registered
    gone = people[1].name
    before = manifest_rows(ws, "SELECT set_name, count(*) FROM labeled_samples GROUP BY 1 ORDER BY 1")
    result = wb_json("forget", "--identity", gone, "-w", ws)
    assert {c["set"] for c in result["cleaned_copies"]} == {"S-folder", "S-rec"}
    assert all(c["samples"] > 0 for c in result["cleaned_copies"])
    assert not [p for p in (tmp_path / "folder").rglob("*.jpg") if gone in p.parent.name]
    with open(tmp_path / "folder" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert gone not in json.dumps(rows) and any(r["old_identity"] == "(erased)" for r in rows)
    after = dict(manifest_rows(ws, "SELECT set_name, count(*) FROM labeled_samples GROUP BY 1"))
    for name, n in before:
        assert after[name] < n
    assert manifest_rows(ws, "SELECT count(*) FROM wb_labeled_identities WHERE identity LIKE ?",
                         [f"%{gone}%"]) == [(0,)]
    assert gone.encode() not in (tmp_path / "rec" / "labels.csv").read_bytes()
    erasure = manifest_rows(ws, "SELECT derived FROM erasures")[0][0]
    assert "S-rec" in erasure and "S-folder" in erasure


def test_a_detector_record_names_moved_or_changed_weights(tmp_path):
    weights = tmp_path / "yunet.onnx"
    shutil.copy(shared_model("yunet_s_640_640.onnx"), weights)
    record = DetectorSpec.parse(f"yunet:{weights}").to_record()
    assert DetectorSpec.from_record(record).key == record["key"]
    with weights.open("ab") as handle:
        handle.write(b"\0")
    from workbench.weights import file_sha256

    file_sha256.cache_clear()
    with pytest.raises(WorkbenchError, match="changed since they were recorded"):
        DetectorSpec.from_record(record)
    weights.unlink()
    with pytest.raises(WorkbenchError, match="gone from"):
        DetectorSpec.from_record(record)
