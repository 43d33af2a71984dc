"""Hostile files: crafted pickles, FIFOs, device links, odd names, absurd RecordIO headers and
labels. Each gives a clean, recorded outcome (a reason or a one-line error) in bounded time and
memory, and a run never stops on one bad file."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import noise_image
from tests.helpers import manifest_rows, wb, wb_json
from workbench.errors import WorkbenchError
from workbench.formats.binpairs import PairsError, read_bin
from workbench.formats.recordio import IRHeader, RecordIOWriter, pack, write_insightface_rec
from workbench.labeled.register import register_labeled
from workbench.manifest.workspace import Workspace


def jpeg(seed: int, size: int = 112) -> bytes:
    buf = io.BytesIO()
    noise_image(seed, (size, size)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def numpy_bin() -> bytes:
    images = [np.frombuffer(jpeg(i), np.uint8) for i in range(2)]
    return pickle.dumps((images, np.array([True])), protocol=2)


@pytest.mark.parametrize("change, message", [
    ((b"X\x02\x00\x00\x00u1", b"X\x02\x00\x00\x00O8"), "dtype 'O8'"),  # object arrays
    ((b"X\x01\x00\x00\x00|", b"X\x01\x00\x00\x00!"), "a dtype state"),
    ((b"numpy\nndarray", b"numpy\nmatrix\n"[:13]), "refusing to unpickle numpy.matrix"),
])
def test_crafted_numpy_state_is_refused(tmp_path, change, message):
    data = numpy_bin()
    assert change[0] in data
    (tmp_path / "x.bin").write_bytes(data.replace(change[0], change[1], 1))
    with pytest.raises(PairsError, match=message.replace("(", r"\(")):
        read_bin(tmp_path / "x.bin")


def test_mutated_bins_never_crash_the_process(tmp_path):
    """500 byte-level mutations of a real numpy .bin, read in a child process: a crash of
    numpy's unpickling (the old failure) would kill it; each must load or be refused."""
    (tmp_path / "seed.bin").write_bytes(numpy_bin())
    script = """
import sys, numpy as np
from pathlib import Path
from workbench.formats.binpairs import PairsError, read_bin
seed = Path(sys.argv[1]).read_bytes()
rng = np.random.default_rng(0)
ok = refused = 0
for i in range(500):
    data = bytearray(seed)
    for _ in range(int(rng.integers(1, 6))):
        data[int(rng.integers(len(data)))] = int(rng.integers(256))
    path = Path(sys.argv[1]).with_name(f"m{i}.bin")
    path.write_bytes(bytes(data))
    try:
        read_bin(path)
        ok += 1
    except PairsError:
        refused += 1
print(ok, refused)
"""
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "seed.bin")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ok, refused = map(int, proc.stdout.split())
    assert ok + refused == 500 and refused > 0


def test_fifos_devices_and_odd_names_do_not_stop_ingest(tmp_path):
    folder = tmp_path / "web"
    folder.mkdir()
    noise_image(1, (200, 200)).save(folder / "plain.jpg")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    with open(odd, "wb") as handle:
        handle.write(jpeg(2, 200))
    ws = str(tmp_path / "ws")
    first = wb_json("ingest", str(folder), "-w", ws)
    assert first["files_seen"] == 4 and first["odd_names"] == 1
    reasons = {Path(r[0]).name: r[1] for r in manifest_rows(ws, "SELECT path, reason FROM wb_files")}
    assert reasons["pipe.jpg"] == "not a regular file (a FIFO)"
    assert reasons["zero.jpg"] == "not a regular file (a character device)"
    assert reasons["caf\\xe9.jpg"] == "no face" and reasons["plain.jpg"] == "no face"
    again = wb_json("ingest", str(folder), "-w", ws)
    assert again["already_ingested"] == 4 and again["processed"] == 0


def insightface_rec(folder: Path, header_labels: list[float], image_label: float = 0.0) -> Path:
    """Record 0 with the given identity range, one image record, one identity record."""
    folder.mkdir(parents=True)
    with RecordIOWriter(folder / "train.rec") as writer:
        writer.write(0, pack(IRHeader(2, np.array(header_labels, np.float32), 0, 0), b""))
        writer.write(1, pack(IRHeader(0, image_label, 1, 0), jpeg(1)))
        writer.write(2, pack(IRHeader(2, np.array([1, 2], np.float32), 0, 0), b""))
    (folder / "property").write_text("1,112,112")
    return folder


@pytest.mark.parametrize("labels", [[float("nan"), 3], [2, float("inf")], [2, 1e30], [-5, 3]])
def test_absurd_recordio_headers_are_one_line_errors(tmp_path, labels):
    rec = insightface_rec(tmp_path / "rec", labels)
    ws = Workspace.at(tmp_path / "ws")
    with pytest.raises(WorkbenchError, match="bad InsightFace header"):
        register_labeled(ws, "s", rec)


def test_a_nan_image_label_is_a_reason_for_that_sample(tmp_path):
    folder = tmp_path / "rec"
    write_insightface_rec(folder / "train.rec", [(0, jpeg(1)), (0, jpeg(2)), (1, jpeg(3))])
    data = (folder / "train.rec").read_bytes()
    bad = pack(IRHeader(0, 1.0, 3, 0), jpeg(3))
    nan = pack(IRHeader(0, float("nan"), 3, 0), jpeg(3))
    (folder / "train.rec").write_bytes(data.replace(bad, nan, 1))
    summary = register_labeled(Workspace.at(tmp_path / "ws"), "s", folder)
    assert summary.images == 2 and summary.rejected == {"label out of range (nan)": 1}


@pytest.mark.parametrize("index, message", [
    ("0\t0\n1\t18446744073709551616\n", "non-negative 64-bit integers"),
    ("0\t0\n1\t-8\n", "negative key or offset"),
])
def test_absurd_index_offsets_are_one_line_errors(tmp_path, index, message):
    folder = tmp_path / "rec"
    write_insightface_rec(folder / "train.rec", [(0, jpeg(1))])
    (folder / "train.idx").write_text(index)
    with pytest.raises(WorkbenchError, match=message):
        register_labeled(Workspace.at(tmp_path / "ws"), "s", folder)


def test_absurd_class_counts_and_labels_are_refused_without_allocating(tmp_path):
    folder = tmp_path / "rec"
    write_insightface_rec(folder / "train.rec", [(0, jpeg(1)), (1, jpeg(2))])
    (folder / "property").write_text("2000000000,112,112")
    with pytest.raises(WorkbenchError, match="2000000000 classes"):
        register_labeled(Workspace.at(tmp_path / "ws1"), "s", folder)
    (folder / "property").unlink()
    (folder / "property").mkdir()
    with pytest.raises(WorkbenchError, match="malformed property file"):
        register_labeled(Workspace.at(tmp_path / "ws2"), "s", folder)
    plain = tmp_path / "plain"
    plain.mkdir()
    with RecordIOWriter(plain / "data.rec") as writer:
        for key, label in enumerate([0.0, 1.0, 5e7]):
            writer.write(key, pack(IRHeader(0, label, key, 0), jpeg(key)))
    summary = register_labeled(Workspace.at(tmp_path / "ws3"), "s", plain)
    assert summary.identities == 2 and summary.rejected == {"label out of range (5e+07)": 1}


def test_hf_labels_out_of_range_and_device_paths_are_reasons(tmp_path):
    datasets = pytest.importorskip("datasets")
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(jpeg(5))
    # image records as HF stores them ({bytes, path}); `datasets` itself would read /dev/zero
    image = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    features = datasets.Features({"image": image, "label": datasets.ClassLabel(names=["a", "b"])})
    rows = [{"bytes": None, "path": "good.jpg"}, {"bytes": None, "path": "good.jpg"},
            {"bytes": None, "path": "/dev/zero"}, {"bytes": None, "path": str(outside)},
            {"bytes": None, "path": "../outside.jpg"}]
    ds = datasets.Dataset.from_dict({"image": rows, "label": [0, -1, 1, 1, 0]}, features=features)
    ds.save_to_disk(str(tmp_path / "hf"))
    (tmp_path / "hf" / "good.jpg").write_bytes(jpeg(5))  # a path inside the dataset folder is read
    summary = register_labeled(Workspace.at(tmp_path / "ws"), "s", tmp_path / "hf", aligned=True)
    assert summary.images == 1
    outside_reason = "no image bytes (image path outside the dataset folder: {})"
    assert summary.rejected == {"label out of range (-1)": 1, outside_reason.format("/dev/zero"): 1,
                                outside_reason.format(outside): 1, outside_reason.format("../outside.jpg"): 1}
    allowed = register_labeled(Workspace.at(tmp_path / "ws2"), "s", tmp_path / "hf", aligned=True,
                               outside_paths=True)  # the user's choice: any local regular file
    assert allowed.images == 3
    assert allowed.rejected == {"label out of range (-1)": 1,
                                "no image bytes (not a regular file (a character device))": 1}


def test_jpeg_with_bytes_after_its_end_is_a_good_labeled_image(tmp_path):
    folder = tmp_path / "set" / "alice"
    folder.mkdir(parents=True)
    (folder / "0.jpg").write_bytes(jpeg(7) + b"\x00phone maker notes\xff\xd8")
    (folder / "1.jpg").write_bytes(jpeg(8)[:-400])
    summary = register_labeled(Workspace.at(tmp_path / "ws"), "s", tmp_path / "set", aligned=True)
    assert summary.images == 1 and summary.rejected == {"corrupt image (truncated JPEG)": 1}


def test_float_tiff_is_not_black(tmp_path):
    from workbench.ingest.decode import decode_image

    buf = io.BytesIO()
    Image.fromarray(np.full((120, 120), 0.5, np.float32), mode="F").save(buf, format="TIFF")
    assert decode_image(buf.getvalue()).rgb.mean() == pytest.approx(128, abs=1)


def test_wb_labeled_add_of_a_bad_header_exits_1_in_one_line(tmp_path):
    rec = insightface_rec(tmp_path / "rec", [2, 1e30])
    proc = wb("labeled", "add", "s", str(rec), "-w", str(tmp_path / "ws"), check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
