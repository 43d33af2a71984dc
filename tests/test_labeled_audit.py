"""`wb audit labeled` and `wb labeled clean` through the CLI, on real faces with real models.

The set: LFW identities with six or more photos, and planted in it, by name:
one face moved to another identity's folder, one identity split into two
folders, two identities merged into one folder, a photo copied twice, an
identity of an evaluation `.bin` copied in, and an identity with one photo.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import shared_model
from tests.helpers import manifest_rows, wb, wb_json
from workbench.formats.images import decode_crop
from workbench.labeled.access import LabeledSet
from workbench.manifest.workspace import Workspace

pytestmark = pytest.mark.slow


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, lfw_dir) -> dict:
    root = tmp_path_factory.mktemp("labeled-audit")
    big = [p for p in sorted(lfw_dir.iterdir()) if len(list(p.iterdir())) >= 6]
    pairs_people = [p for p in sorted(lfw_dir.iterdir()) if 2 <= len(list(p.iterdir())) <= 3][:6]
    assert len(big) >= 16 and len(pairs_people) == 6
    s, e = root / "S", root / "E"
    for person in big[:16]:
        for photo in sorted(person.iterdir()):
            link(photo, s / person.name / photo.name)
    split, m1, m2, source, target, copied = (p.name for p in big[:6])
    moved = sorted((s / source).iterdir())[0]
    moved.rename(s / target / moved.name)
    (s / f"{split}__b").mkdir()
    for photo in sorted((s / split).iterdir())[::2]:
        photo.rename(s / f"{split}__b" / photo.name)
    (s / m2).rename(s / "merged")
    for photo in sorted((s / m1).iterdir()):
        photo.rename(s / "merged" / photo.name)
    (s / m1).rmdir()
    duplicate = sorted((s / copied).iterdir())[0]
    link(duplicate.resolve(), s / copied / f"again_{duplicate.name}")
    solo = sorted(lfw_dir.iterdir())[0]
    link(sorted(solo.iterdir())[0], s / "solo" / "only.jpg")
    for person in pairs_people:
        for photo in sorted(person.iterdir()):
            link(photo, e / person.name / photo.name)
    leaked = pairs_people[0].name
    for photo in sorted((e / leaked).iterdir()):
        link(photo.resolve(), s / f"leak-{leaked}" / photo.name)
    ws = root / "ws"
    detector = f"yunet:{shared_model('yunet_s_640_640.onnx')}"
    wb("labeled", "add", "S", str(s), "--detector", detector, "--workspace", str(ws))
    wb("labeled", "add", "E", str(e), "--detector", detector, "--workspace", str(ws))
    wb("labeled", "pairs", "E", "--out", str(root / "eval.bin"), "--folds", "2", "--pairs-per-fold", "20",
       "--workspace", str(ws))
    model = f"onnx:{shared_model('mobilefacenet_128d.onnx')}"
    result = wb_json("audit", "labeled", "S", "--against", str(root / "eval.bin"), "--model", model,
                     "--workspace", str(ws))
    return {"root": root, "ws": ws, "model": model, "result": result, "moved": f"{target}/{moved.name}",
            "source": source, "split": split, "leaked": f"leak-{leaked}", "copied": copied,
            "duplicate": f"{copied}/again_{duplicate.name}"}


def findings(ws: Path, kind: str) -> list[tuple]:
    return manifest_rows(ws, "SELECT locator, identity, other_identity, other_name, evidence "
                             "FROM wb_labeled_findings WHERE kind = ? ORDER BY locator, identity", [kind])


def test_the_audit_finds_what_was_planted_in_real_faces(planted):
    ws, result = planted["ws"], planted["result"]
    wrong = findings(ws, "wrong_label")
    assert (planted["moved"], planted["moved"].split("/")[0], planted["source"]) in \
        [(loc, ident, other) for loc, ident, other, _, _ in wrong]
    assert len(wrong) <= 3
    assert [(a, b) for _, a, b, _, _ in findings(ws, "same_person")] == \
        [(planted["split"], f"{planted['split']}__b")]
    assert [ident for _, ident, _, _, _ in findings(ws, "mixed_identity")] == ["merged"]
    leaks = findings(ws, "leakage")
    assert {ident for _, ident, _, _, _ in leaks} == {planted["leaked"]}
    assert all(json.loads(ev)["against"] == str(planted["root"] / "eval.bin") for *_, ev in leaks)
    exact = [(loc, json.loads(ev)) for loc, _, _, _, ev in findings(ws, "duplicate")]
    assert (planted["duplicate"], True) in [(loc, ev["exact"]) for loc, ev in exact]
    assert result["single_face_identities"] == 1 and result["unchecked_faces"] == 1
    assert result["wrong_label_rule"]["estimated_precision"] >= 0.9
    report = Path(result["report"])
    assert (report / "scores.png").stat().st_size > 0 and (report / "wrong_labels.png").stat().st_size > 0


def test_a_rerun_reuses_embeddings_and_replaces_the_findings(planted):
    ws = planted["ws"]
    before = manifest_rows(ws, "SELECT kind, count(*) FROM labeled_findings GROUP BY 1 ORDER BY 1")
    again = wb_json("audit", "labeled", "S", "--against", str(planted["root"] / "eval.bin"),
                    "--model", planted["model"], "--workspace", str(ws))
    assert again["embedded_now"] == 0
    assert manifest_rows(ws, "SELECT kind, count(*) FROM labeled_findings GROUP BY 1 ORDER BY 1") == before


def test_an_audit_holding_the_set_in_half_precision_finds_the_same(planted, own_ws, monkeypatch):
    """Above 1 GiB of float32 (MS1MV2) the audit holds float16 vectors; forced here on a small set."""
    from workbench.embed import compute
    from workbench.labeled_audit.run import run_audit_labeled

    monkeypatch.setattr(compute, "HALF_FROM_BYTES", 0)
    run_audit_labeled(Workspace.at(own_ws), "S", model=planted["model"],
                      against=[str(planted["root"] / "eval.bin")])
    query = "SELECT kind, locator, identity, other_identity FROM wb_labeled_findings ORDER BY ALL"
    assert manifest_rows(own_ws, query) == manifest_rows(planted["ws"], query)


@pytest.fixture()
def own_ws(planted, tmp_path) -> Path:
    copy = tmp_path / "ws"
    shutil.copytree(planted["ws"], copy, symlinks=True)
    return copy


def test_clean_writes_and_registers_a_cleaned_recordio_copy(planted, own_ws):
    out = own_ws.parent / "clean-rec"
    faces_before = manifest_rows(own_ws, "SELECT count(*) FROM labeled_samples WHERE set_name = 'S'")
    result = wb_json("labeled", "clean", "S", "--out", str(out), "--merge", "same_person",
                     "--workspace", str(own_ws))
    assert result["name"] == "S-clean" and result["faces_in"] - result["faces_out"] == sum(
        result["dropped"].values())
    assert result["dropped"]["wrong_label"] >= 1 and result["dropped"]["duplicate"] >= 1
    assert result["merged_pairs"] == 1
    with open(out / "labels.csv") as handle:
        mapping = {r["old_identity"]: r for r in csv.DictReader(handle)}
    split = planted["split"]
    assert mapping[split]["new_label"] == mapping[f"{split}__b"]["new_label"] != ""
    assert mapping[planted["leaked"]]["new_label"] == ""
    with open(out / "dropped.csv") as handle:
        dropped = {r["locator"]: r["reasons"] for r in csv.DictReader(handle)}
    assert dropped[planted["moved"]] == "wrong_label" and dropped[planted["duplicate"]] == "duplicate"
    sets = {s["name"]: s for s in wb_json("labeled", "list", "--workspace", str(own_ws))}
    clean = sets["S-clean"]
    assert clean["format"] == "rec" and clean["images"] == result["faces_out"]
    assert clean["identities"] == result["identities_out"]
    assert clean["lineage"]["cleaned_from"] == "S" and clean["lineage"]["model_key"] == result["model_key"]
    assert manifest_rows(own_ws, "SELECT count(*) FROM labeled_samples WHERE set_name = 'S'") == faces_before
    ws = Workspace.at(own_ws)
    with ws.connect(read_only=True) as con:
        labeled = LabeledSet(ws, con, "S-clean")
        assert decode_crop(labeled.crop_bytes(0)).shape == (112, 112, 3)
        labeled.close()
    written = Path(wb_json("card", "--workspace", str(own_ws))["path"]).read_text()
    assert "- S-clean: cleaned from S by audit" in written
    trained = wb_json("train", "--labeled", "S-clean", "-w", str(own_ws), "--backbone", "r18", "--width",
                      "0.125", "--input-size", "32", "--embedding-size", "32", "--batch-size", "8",
                      "--num-workers", "0", "--steps", "2")
    assert trained["steps"] == 2
    assert manifest_rows(own_ws, "SELECT json_extract_string(config, '$.labeled') FROM wb_train_runs") == \
        [("S-clean",)]


@pytest.mark.parametrize("fmt", ["folder", "hf"])
def test_clean_in_other_formats_registers_the_same_faces(planted, own_ws, fmt):
    result = wb_json("labeled", "clean", "S", "--out", str(own_ws.parent / fmt), "--format", fmt,
                     "--name", f"S-{fmt}", "--workspace", str(own_ws))
    sets = {s["name"]: s for s in wb_json("labeled", "list", "--workspace", str(own_ws))}
    assert sets[f"S-{fmt}"]["images"] == result["faces_out"] > 0
    assert sets[f"S-{fmt}"]["identities"] == result["identities_out"]
    assert sets[f"S-{fmt}"]["rejected"] == {}


def test_bad_input_gets_one_line_and_writes_nothing(planted, own_ws, tmp_path):
    before = manifest_rows(own_ws, "SELECT count(*) FROM labeled_findings")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x80\x04not a pickle at all")
    proc = wb("audit", "labeled", "S", "--against", str(junk), "--model", planted["model"],
              "--workspace", str(own_ws), check=False)
    assert proc.returncode == 1 and "not a verification-pairs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert manifest_rows(own_ws, "SELECT count(*) FROM labeled_findings") == before
    proc = wb("labeled", "clean", "S", "--out", str(tmp_path / "x"), "--drop", "everything",
              "--workspace", str(own_ws), check=False)
    assert proc.returncode == 1 and "unknown kind everything" in proc.stderr
    one = tmp_path / "one"
    for photo in sorted((planted["root"] / "S" / planted["copied"]).iterdir())[:3]:
        link(photo.resolve(), one / "person" / photo.name)
    wb("labeled", "add", "one", str(one), "--detector", f"yunet:{shared_model('yunet_s_640_640.onnx')}",
       "--workspace", str(own_ws))
    proc = wb("audit", "labeled", "one", "--model", planted["model"], "--workspace", str(own_ws), check=False)
    assert proc.returncode == 1 and "at least two identities" in proc.stderr
    proc = wb("labeled", "clean", "one", "--out", str(tmp_path / "y"), "--workspace", str(own_ws),
              check=False)
    assert proc.returncode == 1 and "wb audit labeled one" in proc.stderr


def test_findings_in_the_app_and_reviews_back_into_clean(planted, own_ws):
    from workbench.browse.app import load_fiftyone

    fo = load_fiftyone()
    name = f"wb-test-labeled-{own_ws.parent.name}"  # unique: the FiftyOne database may be shared
    synced = wb_json("browse", "--labeled", "S", "--no-launch", "--dataset", name,
                     "--workspace", str(own_ws))
    assert synced["saved_views"] == ["duplicates", "leakage", "mixed-identities", "same-person-pairs",
                                     "wrong-labels"]
    dataset = fo.load_dataset(name)
    assert len(dataset) == synced["samples"] > 0
    wrong = dataset.load_saved_view("wrong-labels")
    moved_idx = manifest_rows(own_ws, "SELECT sample_idx FROM wb_labeled_samples WHERE set_name = 'S' "
                                      "AND locator = ?", [planted["moved"]])[0][0]
    moved = [s for s in wrong if s.sample_idx == moved_idx]
    assert len(moved) == 1 and moved[0].likely_identity == planted["source"]
    assert moved[0].identity.label == planted["moved"].split("/")[0]
    pairs = dataset.load_saved_view("same-person-pairs")
    assert {s.identity.label for s in pairs} == {planted["split"], f"{planted['split']}__b"}
    assert {s.leaked_from for s in dataset.load_saved_view("leakage")} != {None}
    dataset.select_by("face_id", [moved[0].face_id]).tag_samples("keep")
    pulled = wb_json("review", "pull", "--dataset", name, "--workspace", str(own_ws))
    assert pulled["added"] == 1 and pulled["reviews_by_tag"] == {"keep": 1}
    again = wb_json("browse", "--labeled", "S", "--no-launch", "--dataset", name,
                    "--workspace", str(own_ws))
    assert (again["added"], again["deleted"], again["samples"]) == (0, 0, synced["samples"])
    result = wb_json("labeled", "clean", "S", "--out", str(own_ws.parent / "reviewed"),
                     "--workspace", str(own_ws))
    assert result["kept_by_review"] == 1
    with open(own_ws.parent / "reviewed" / "dropped.csv") as handle:
        assert planted["moved"] not in {r["locator"] for r in csv.DictReader(handle)}
    audited = wb_json("audit", "labeled", "S-clean", "--model", planted["model"], "--workspace", str(own_ws))
    assert audited["wrong_labels"] < planted["result"]["wrong_labels"] + 2
    shown = wb_json("browse", "--labeled", "S-clean", "--all", "--no-launch", "--dataset", f"{name}-clean",
                    "--workspace", str(own_ws))
    assert shown["samples"] == result["faces_out"]
    paths = fo.load_dataset(f"{name}-clean").values("filepath")
    registration = manifest_rows(own_ws, "SELECT registration FROM wb_labeled_sets "
                                         "WHERE name = 'S-clean'")[0][0]
    assert all(f"/cache/labeled-crops/{registration}/" in p and Path(p).stat().st_size > 0 for p in paths)
