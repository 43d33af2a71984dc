"""RecordIO read/write without mxnet, checked against files built byte by byte."""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest

from workbench.formats import mapped
from workbench.formats.recordio import (
    MAGIC_BYTES,
    IRHeader,
    RecordIOError,
    RecordIOReader,
    RecordIOWriter,
    pack,
    rec_layout,
    unpack,
    write_insightface_rec,
)


def raw_record(cflag: int, piece: bytes) -> bytes:
    """One physical record, from the layout spec: magic, lrec, payload, zero padding."""
    pad = (4 - len(piece) % 4) % 4
    return struct.pack("<II", 0xCED7230A, (cflag << 29) | len(piece)) + piece + b"\0" * pad


def test_reader_on_a_file_built_byte_by_byte(tmp_path):
    image_a = b"\xff\xd8JPEG-A\xff\xd9"
    # A payload holding the magic word at a 4-aligned offset is stored in two pieces.
    header_b = struct.pack("<IfQQ", 0, 7.0, 2, 0)
    image_b = b"abcd" + MAGIC_BYTES + b"tail!"
    payload_b = header_b + image_b
    split_at = len(header_b) + 4
    assert payload_b[split_at : split_at + 4] == MAGIC_BYTES
    rec0 = raw_record(0, struct.pack("<IfQQ", 0, 3.0, 1, 0) + image_a)
    rec1 = raw_record(1, payload_b[:split_at]) + raw_record(3, payload_b[split_at + 4 :])
    # Multi-label record: flag 2 with two float32 labels after the header.
    payload_c = struct.pack("<IfQQ", 2, 0.0, 3, 0) + struct.pack("<2f", 5.0, 9.0) + b"IMG"
    rec2 = raw_record(0, payload_c)
    (tmp_path / "t.rec").write_bytes(rec0 + rec1 + rec2)
    (tmp_path / "t.idx").write_text(f"0\t0\n1\t{len(rec0)}\n2\t{len(rec0) + len(rec1)}\n")

    with RecordIOReader(tmp_path / "t.rec") as reader:
        header, image = unpack(reader.read_key(0))
        assert (header.flag, header.label, header.id, image) == (0, 3.0, 1, image_a)
        header, image = unpack(reader.read_key(1))
        assert header.label == 7.0 and image == image_b
        header, image = unpack(reader.read_key(2))
        assert header.flag == 2 and list(header.label) == [5.0, 9.0] and image == b"IMG"
        assert header.class_label == 5.0
        assert [off for off, _ in reader.scan()] == [0, len(rec0), len(rec0) + len(rec1)]
        # The vectorised path agrees, including the split and multi-label records.
        fast = [(k, v, bytes(img)) for k, v, img in reader.iter_images()]
        assert fast == [(0, 3.0, image_a), (1, 7.0, image_b), (2, 5.0, b"IMG")]
        assert rec_layout(reader).identity_spans is None  # plain im2rec


def test_writer_matches_the_byte_layout(tmp_path):
    payload = b"\x01\x02\x03\x04" + MAGIC_BYTES + b"\x05"
    with RecordIOWriter(tmp_path / "w.rec") as writer:
        writer.write(0, payload)
        writer.write(5, b"xyz")
    expected = raw_record(1, b"\x01\x02\x03\x04") + raw_record(3, b"\x05")
    assert (tmp_path / "w.rec").read_bytes() == expected + raw_record(0, b"xyz")
    assert (tmp_path / "w.idx").read_text() == f"0\t0\n5\t{len(expected)}\n"
    with RecordIOReader(tmp_path / "w.rec") as reader:
        assert reader.read_key(0) == payload and reader.read_key(5) == b"xyz"


def test_unaligned_magic_is_not_split(tmp_path):
    payload = b"\x00" + MAGIC_BYTES + b"\x00\x00\x00"
    with RecordIOWriter(tmp_path / "u.rec") as writer:
        writer.write(0, payload)
    assert (tmp_path / "u.rec").read_bytes() == raw_record(0, payload)


def test_insightface_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    samples = [(label, rng.bytes(int(rng.integers(10, 300)))) for label in (0, 0, 0, 1, 3, 3)]
    n = write_insightface_rec(tmp_path / "train.rec", samples, num_classes=4)
    assert n == 6
    assert (tmp_path / "property").read_text() == "4,112,112"
    with RecordIOReader(tmp_path / "train.rec") as reader:
        layout = rec_layout(reader)
        assert list(layout.image_keys) == [1, 2, 3, 4, 5, 6]
        assert layout.identity_spans.tolist() == [[1, 4], [4, 5], [5, 7]]
        for key, (label, data) in zip(layout.image_keys, samples, strict=True):
            header, image = unpack(reader.read_key(int(key)))
            assert header.class_label == label and image == data


def test_pack_unpack_multi_label():
    header = IRHeader(0, np.array([1.5, 2.5], np.float32), 4, 0)
    back, data = unpack(pack(header, b"Z"))
    assert back.flag == 2 and back.label.tolist() == [1.5, 2.5] and data == b"Z"


def test_missing_index_and_truncation_and_bad_magic(tmp_path):
    write_insightface_rec(tmp_path / "train.rec", [(0, b"a" * 100), (1, b"b" * 100)])
    (tmp_path / "train.idx").rename(tmp_path / "saved.idx")
    with pytest.raises(RecordIOError, match="index file missing"):
        RecordIOReader(tmp_path / "train.rec")
    (tmp_path / "saved.idx").rename(tmp_path / "train.idx")
    data = (tmp_path / "train.rec").read_bytes()
    (tmp_path / "train.rec").write_bytes(data[:150])
    with pytest.raises(RecordIOError, match="truncated"):
        RecordIOReader(tmp_path / "train.rec")
    (tmp_path / "train.rec").write_bytes(b"\x00" * 4 + data[4:])
    with pytest.raises(RecordIOError, match="bad magic"):
        RecordIOReader(tmp_path / "train.rec")


def _resident_kb(path) -> int:
    """Resident kB of this process's mappings of `path` (Linux /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_a_scan_does_not_keep_the_whole_file_resident(tmp_path, monkeypatch):
    """MS1MV2's train.rec is 14 GB: reading it through must not leave it all in the resident set."""
    rng = np.random.default_rng(0)
    payloads = [rng.bytes(40_000) for _ in range(200)]  # 8 MB of records
    rec = tmp_path / "train.rec"
    write_insightface_rec(rec, ((i // 20, p) for i, p in enumerate(payloads)), num_classes=10)
    rec.write_bytes(rec.read_bytes())  # in one write: the page cache holds it in large folios, as it
    # does a real set read back from disk
    monkeypatch.setattr(mapped, "RESIDENT_BYTES", 1 << 20)
    with RecordIOReader(rec) as reader:
        keys = rec_layout(reader).image_keys
        seen = [bytes(image) for _, _, image in reader.iter_images(keys, batch=16)]
        assert seen == payloads  # the data behind the views stays right after pages are released
        assert _resident_kb(rec) < 3 * 1024
        one_by_one = [unpack(reader.read_key(int(k)))[1] for k in keys]
        assert one_by_one == payloads and _resident_kb(rec) < 3 * 1024
        # Training reads records in random order: each read maps a whole cached folio (up to 2 MiB)
        shuffled = rng.permutation(keys)
        at_random = [unpack(reader.read_key(int(k)))[1] for k in shuffled]
        assert at_random == [payloads[int(k) - 1] for k in shuffled] and _resident_kb(rec) < 3 * 1024
        batched = [bytes(image) for _, _, image in reader.iter_images(shuffled, batch=64)]
        assert batched == at_random and _resident_kb(rec) < 3 * 1024
