"""`wb labeled add` for RecordIO, identity folders and HF datasets, and every bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import noise_image
from tests.helpers import wb, wb_json
from workbench.formats.recordio import (
    IRHeader,
    RecordIOWriter,
    encode_record,
    pack,
    write_insightface_rec,
)


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    noise_image(seed).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_rec(folder: Path, counts: list[int], num_classes: int | None = None) -> Path:
    samples = [(label, jpeg(100 * label + i)) for label, n in enumerate(counts) for i in range(n)]
    write_insightface_rec(folder / "train.rec", samples, num_classes=num_classes or len(counts))
    return folder


def add(*args: str) -> dict:
    return wb_json("labeled", "add", *args)


def test_rec_set_registers_identities_and_images(tmp_path):
    rec = make_rec(tmp_path / "faces_emore", [3, 2, 4])
    summary = add("ms1mv2", str(rec), "-w", str(tmp_path / "ws"))
    assert summary["format"] == "rec" and summary["aligned"] is True
    assert summary["identities"] == 3 and summary["images"] == 9 and summary["rejected"] == {}
    again = add("ms1mv2", str(rec), "-w", str(tmp_path / "ws"))
    assert again["already_registered"] is True and again["images"] == 9
    listed = wb_json("labeled", "list", "-w", str(tmp_path / "ws"))
    assert [s["name"] for s in listed] == ["ms1mv2"]


def test_plain_im2rec_without_property(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    with RecordIOWriter(folder / "data.rec") as writer:
        for key, label in enumerate([0, 0, 1, 2, 2, 2]):
            writer.write(key, pack(IRHeader(0, float(label), key, 0), jpeg(key)))
    summary = add("plain", str(folder), "-w", str(tmp_path / "ws"))
    assert summary["identities"] == 3 and summary["images"] == 6


def test_rec_bad_samples_get_reasons_and_empty_identities_are_reported(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    good = jpeg(1)
    samples = [(0, good), (0, good[: len(good) // 2]), (1, good), (7, good)]
    # Identity 2 has an identity record with an empty span: no images.
    with RecordIOWriter(folder / "train.rec") as writer:
        writer.write(0, pack(IRHeader(2, np.array([5, 8], "<f4"), 0, 0), b""))
        for key, (label, data) in enumerate(samples, start=1):
            writer.write(key, pack(IRHeader(0, float(label), key, 0), data))
        for key, span in zip((5, 6, 7), ([1, 3], [3, 4], [5, 5]), strict=True):
            writer.write(key, pack(IRHeader(2, np.array(span, "<f4"), 0, 0), b""))
    (folder / "property").write_text("3,112,112")
    summary = add("bad", str(folder), "-w", str(tmp_path / "ws"))
    assert summary["images"] == 2
    assert summary["rejected"] == {"corrupt image (truncated JPEG)": 1, "label out of range (7)": 1}
    assert summary["empty_identities"] == 1 and summary["empty_identity_examples"] == ["2"]


@pytest.mark.parametrize("damage, message", [
    ("no_idx", "index file missing"),
    ("truncated", "truncated"),
    ("magic", "bad magic"),
])
def test_broken_rec_files_are_one_line_errors_and_register_nothing(tmp_path, damage, message):
    rec = make_rec(tmp_path / "broken", [2, 2])
    data = (rec / "train.rec").read_bytes()
    if damage == "no_idx":
        (rec / "train.idx").unlink()
    elif damage == "truncated":
        (rec / "train.rec").write_bytes(data[: len(data) // 2])
    else:
        (rec / "train.rec").write_bytes(b"JUNK" + data[4:])
    proc = wb("labeled", "add", "s", str(rec), "-w", str(tmp_path / "ws"), check=False)
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert wb_json("labeled", "list", "-w", str(tmp_path / "ws")) == []


def test_record_cut_mid_payload_is_a_per_sample_reason(tmp_path):
    folder = tmp_path / "cut"
    folder.mkdir()
    with RecordIOWriter(folder / "data.rec") as writer:
        for key in range(4):
            writer.write(key, pack(IRHeader(0, float(key % 2), key, 0), jpeg(key)))
    data = (folder / "data.rec").read_bytes()
    (folder / "data.rec").write_bytes(data[:-100])  # the last record loses its tail
    summary = add("cut", str(folder), "-w", str(tmp_path / "ws"))
    assert summary["images"] == 3
    last_offset = len(data) - len(encode_record(pack(IRHeader(0, 1.0, 3, 0), jpeg(3))))
    assert list(summary["rejected"]) == [f"corrupt record (truncated record at offset {last_offset})"]


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = wb("labeled", "add", "s", str(tmp_path / "empty"), "-w", str(tmp_path / "ws"), check=False)
    assert proc.returncode == 1 and "no identity folders" in proc.stderr


def test_name_conflict_and_remove(tmp_path, aligned_folder):
    ws = str(tmp_path / "ws")
    add("s", str(aligned_folder), "--aligned", "-w", ws)
    other = make_rec(tmp_path / "other", [1])
    proc = wb("labeled", "add", "s", str(other), "-w", ws, check=False)
    assert proc.returncode == 1 and "already registered with other contents" in proc.stderr
    wb("labeled", "remove", "s", "-w", ws)
    assert add("s", str(other), "-w", ws)["format"] == "rec"


@pytest.mark.slow
def test_folder_and_hf_give_the_same_identities(tmp_path, aligned_folder):
    datasets = pytest.importorskip("datasets")
    identities = sorted(p.name for p in aligned_folder.iterdir())
    files = sorted(aligned_folder.rglob("*.jpg"))
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=identities)})
    ds = datasets.Dataset.from_dict(
        {"image": [str(f) for f in files], "label": [identities.index(f.parent.name) for f in files]},
        features=features)
    ds.save_to_disk(str(tmp_path / "hf_disk"))
    (tmp_path / "hf_parquet").mkdir()
    ds.to_parquet(str(tmp_path / "hf_parquet" / "part-0.parquet"))
    ws = str(tmp_path / "ws")
    folder = add("f", str(aligned_folder), "--aligned", "-w", ws)
    disk = add("d", str(tmp_path / "hf_disk"), "--aligned", "-w", ws)
    # the parquet names some images by absolute path, outside its folder: the user allows it
    refused = wb("labeled", "add", "p", str(tmp_path / "hf_parquet"), "--aligned", "-w", ws, check=False)
    assert refused.returncode == 1 and "outside the dataset folder" in refused.stderr
    parquet = add("p", str(tmp_path / "hf_parquet"), "--aligned", "--allow-outside-paths", "-w", ws)
    assert disk["format"] == parquet["format"] == "hf"
    for other in (disk, parquet):
        assert (other["identities"], other["images"]) == (folder["identities"], folder["images"])


def test_hf_missing_column_is_explained(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"img": [jpeg(1)], "person": [0]}).save_to_disk(str(tmp_path / "hf"))
    proc = wb("labeled", "add", "s", str(tmp_path / "hf"), "-w", str(tmp_path / "ws"), check=False)
    assert proc.returncode == 1 and "use --image-column/--label-column" in proc.stderr
    summary = add("s", str(tmp_path / "hf"), "--image-column", "img", "--label-column", "person",
                  "--aligned", "-w", str(tmp_path / "ws"))
    assert summary["images"] == 1 and summary["identities"] == 1


def test_pairs_from_a_registered_set(tmp_path):
    from workbench.formats.binpairs import read_bin

    root = tmp_path / "ids"
    for identity in range(24):
        (root / f"person{identity:02d}").mkdir(parents=True)
        for k in range(3):
            noise_image(1000 * identity + k).save(root / f"person{identity:02d}" / f"{k}.jpg")
    ws = str(tmp_path / "ws")
    add("people", str(root), "--aligned", "-w", ws)
    counts = wb_json("labeled", "pairs", "people", "--out", str(tmp_path / "p.bin"),
                     "--pairs-per-fold", "4", "-w", ws)
    assert counts["pairs"] == 40 and counts["same"] == 20
    pairs = read_bin(tmp_path / "p.bin")
    assert len(pairs) == 40 and all(img.startswith(b"\xff\xd8") for img in pairs.images)
