"""MXNet RecordIO (`.rec` + `.idx`) without mxnet, as InsightFace ships MS1MV2 and friends.

Layout of one record: uint32 magic 0xCED7230A, uint32 lrec = (cflag << 29) | length,
`length` payload bytes, zero padding to a multiple of 4. A payload that contains
the magic word at a 4-byte-aligned position is written in pieces (cflag 1 = first,
2 = middle, 3 = last) and rejoined with the magic word in between.

Payload: IRHeader `<IfQQ` (flag, label, id, id2); flag 0 means a scalar label,
flag N > 0 means N float32 labels follow the header; then the image bytes.

InsightFace layout: record 0 has flag 2 and labels [id_start, id_end]; images are
keys 1..id_start-1; keys id_start..id_end-1 are identity records whose labels are
[first_key, end_key). Plain im2rec files (record 0 is an image) work too.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.errors import WorkbenchError
from workbench.formats.mapped import ReleasingMap, segments

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_MASK = (1 << 29) - 1
IR_HEADER = struct.Struct("<IfQQ")


class RecordIOError(WorkbenchError):
    """A malformed RecordIO file or record."""


@dataclass(frozen=True)
class IRHeader:
    flag: int
    label: float | np.ndarray
    id: int
    id2: int

    @property
    def class_label(self) -> float:
        """The class: the scalar label, or the first of several labels."""
        return float(self.label) if self.flag == 0 else float(self.label[0])


def pack(header: IRHeader, data: bytes) -> bytes:
    """Payload bytes for one record (header, optional float32 labels, data)."""
    if isinstance(header.label, np.ndarray | list | tuple):
        labels = np.asarray(header.label, dtype="<f4")
        return IR_HEADER.pack(len(labels), 0.0, header.id, header.id2) + labels.tobytes() + data
    return IR_HEADER.pack(0, float(header.label), header.id, header.id2) + data


def unpack(payload: bytes | memoryview) -> tuple[IRHeader, bytes]:
    if len(payload) < IR_HEADER.size:
        raise RecordIOError(f"record payload too short for a header ({len(payload)} bytes)")
    flag, label, id1, id2 = IR_HEADER.unpack_from(payload, 0)
    start = IR_HEADER.size
    if flag > 0:
        end = start + 4 * flag
        if end > len(payload):
            raise RecordIOError(f"record declares {flag} labels but is too short")
        labels = np.frombuffer(payload, dtype="<f4", count=flag, offset=start).copy()
        return IRHeader(flag, labels, id1, id2), bytes(payload[end:])
    return IRHeader(0, label, id1, id2), bytes(payload[start:])


def _pad(length: int) -> int:
    return (4 - length % 4) % 4


class RecordIOReader:
    """Memory-mapped, random-access reader; thread- and fork-safe for reads.

    Pages of the map that were read are handed back to the kernel as they are read
    (`formats/mapped.py`): a scan of MS1MV2's 14 GB file would otherwise leave all of it in the
    process's resident set."""

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise RecordIOError(f"RecordIO file not found: {self.rec_path}")
        if not self.idx_path.is_file():
            raise RecordIOError(f"index file missing: {self.idx_path} (needed for random access)")
        self.keys, self.offsets = read_index(self.idx_path)
        self._key_to_pos = None
        size = self.rec_path.stat().st_size
        if size == 0:
            raise RecordIOError(f"empty RecordIO file: {self.rec_path}")
        self._pages = ReleasingMap(self.rec_path)
        self._map = self._pages.map
        self.size = size
        if len(self.offsets) and int(self.offsets.max()) >= size:
            raise RecordIOError(
                f"truncated RecordIO file: {self.rec_path} is {size} bytes but its index points "
                f"to offset {int(self.offsets.max())}"
            )
        if len(self.offsets):
            self._check_magic(int(self.offsets[0]))

    def close(self) -> None:
        self._pages.close()

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.keys)

    def _check_magic(self, offset: int) -> None:
        if offset + 8 > self.size:
            raise RecordIOError(f"truncated record at offset {offset}")
        (magic,) = struct.unpack_from("<I", self._map, offset)
        if magic != MAGIC:
            raise RecordIOError(f"bad magic 0x{magic:08X} at offset {offset}: not a RecordIO record")

    def read_at(self, offset: int) -> tuple[bytes, int]:
        """The payload starting at `offset`, rejoined if split; and the next record's offset."""
        parts: list[bytes] = []
        while True:
            self._check_magic(offset)
            (lrec,) = struct.unpack_from("<I", self._map, offset + 4)
            cflag, length = lrec >> 29, lrec & LENGTH_MASK
            start = offset + 8
            if start + length > self.size:
                raise RecordIOError(f"truncated record at offset {offset}")
            parts.append(self._map[start : start + length])
            self._pages.read(offset, 8 + length)
            offset = start + length + _pad(length)
            if cflag in (0, 3):
                break
            if cflag not in (1, 2):
                raise RecordIOError(f"bad continuation flag {cflag} at offset {offset}")
        return MAGIC_BYTES.join(parts), offset

    def read_key(self, key: int) -> bytes:
        if self._key_to_pos is None:
            self._key_to_pos = _KeyLookup(self.keys)
        return self.read_at(int(self.offsets[self._key_to_pos[key]]))[0]

    def header(self, key: int) -> IRHeader:
        return unpack(self.read_key(key))[0]

    def iter_images(
        self, keys: np.ndarray | None = None, batch: int = 65536
    ) -> Iterator[tuple[int, float, memoryview]]:
        """(key, class label, image bytes) for `keys` (default: every key), zero-copy.

        Headers are parsed with numpy, up to `batch` at once; only records split on the
        magic word or carrying several labels take the per-record path. The
        memoryviews point into the map: copy them to keep them past `close()`.
        """
        keys = self.keys if keys is None else np.asarray(keys, dtype=np.int64)
        if self._key_to_pos is None:
            self._key_to_pos = _KeyLookup(self.keys)
        buf = np.frombuffer(self._map, dtype=np.uint8)
        view = memoryview(self._map)
        lookup = self._key_to_pos
        for start in range(0, len(keys), batch):
            chunk = keys[start : start + batch]
            if lookup.contiguous and len(chunk) and chunk.min() >= 0 and chunk.max() < len(self.keys):
                offsets = self.offsets[chunk]
            else:
                offsets = self.offsets[[lookup[int(k)] for k in chunk]]
            for segment in segments(offsets):  # keys in any order: the map is released between two
                yield from self._images(chunk[segment], offsets[segment], buf, view)
                self._pages.release()

    def _images(self, keys: np.ndarray, offs: np.ndarray, buf: np.ndarray, view: memoryview
                ) -> Iterator[tuple[int, float, memoryview]]:
        fits = offs + 8 + IR_HEADER.size <= self.size
        safe = np.where(fits, offs, 0)
        words = buf[safe[:, None] + np.arange(8 + IR_HEADER.size)].copy()
        magic = words[:, 0:4].view("<u4")[:, 0]
        lrec = words[:, 4:8].view("<u4")[:, 0]
        flag = words[:, 8:12].view("<u4")[:, 0]
        label = words[:, 12:16].view("<f4")[:, 0]
        length = (lrec & LENGTH_MASK).astype(np.int64)
        begin = offs + 8 + IR_HEADER.size
        end = offs + 8 + length
        fast = fits & (magic == MAGIC) & ((lrec >> 29) == 0) & (flag == 0) & (end <= self.size)
        rows = zip(keys.tolist(), label.tolist(), begin.tolist(), end.tolist(), fast.tolist(),
                   offs.tolist(), strict=True)
        for key, value, first, last, ok, offset in rows:
            if ok:
                yield key, value, view[first:last]
            else:
                header, image = unpack(self.read_at(offset)[0])
                yield key, header.class_label, memoryview(image)

    def scan(self) -> Iterator[tuple[int, bytes]]:
        """Every record in file order, with its offset (no index needed)."""
        offset = 0
        while offset < self.size:
            payload, next_offset = self.read_at(offset)
            yield offset, payload
            offset = next_offset


class _KeyLookup:
    """key -> position in the index; keys are usually 0..n-1, so this is O(1)."""

    def __init__(self, keys: np.ndarray):
        self.contiguous = len(keys) > 0 and bool(
            keys[0] == 0 and keys[-1] == len(keys) - 1 and np.all(np.diff(keys) == 1)
        )
        self.order = None if self.contiguous else np.argsort(keys, kind="stable")
        self.keys = keys

    def __getitem__(self, key: int) -> int:
        if self.contiguous:
            if not 0 <= key < len(self.keys):
                raise KeyError(key)
            return key
        pos = int(np.searchsorted(self.keys, key, sorter=self.order))
        if pos >= len(self.keys) or self.keys[self.order[pos]] != key:
            raise KeyError(key)
        return int(self.order[pos])


def read_index(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse `key\\toffset` lines into two int64 arrays (vectorised: MS1MV2 has 5.8M)."""
    raw = path.read_bytes()
    try:
        values = np.array(raw.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        raise RecordIOError(f"malformed index file {path}: expected 'key<TAB>offset' lines of "
                            "non-negative 64-bit integers") from None
    if len(values) % 2:
        raise RecordIOError(f"malformed index file {path}: odd number of fields")
    pairs = values.reshape(-1, 2)
    if len(pairs) and int(pairs.min()) < 0:
        raise RecordIOError(f"malformed index file {path}: negative key or offset")
    return pairs[:, 0].copy(), pairs[:, 1].copy()


class RecordIOWriter:
    """Writes `.rec` and `.idx` like MXNet's MXIndexedRecordIO."""

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        self._rec = open(self.rec_path, "wb")  # noqa: SIM115 - closed in close()
        self._idx = open(self.idx_path, "w")  # noqa: SIM115
        self._offset = 0

    def write(self, key: int, payload: bytes) -> None:
        self._idx.write(f"{key}\t{self._offset}\n")
        record = encode_record(payload)
        self._rec.write(record)
        self._offset += len(record)

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encode_record(payload: bytes) -> bytes:
    """The bytes of one logical record, split into pieces where the payload holds the magic."""
    pieces = _split_on_magic(payload)
    out = bytearray()
    for i, piece in enumerate(pieces):
        last = len(pieces) - 1
        cflag = 0 if last == 0 else 1 if i == 0 else 3 if i == last else 2
        out += struct.pack("<II", MAGIC, (cflag << 29) | len(piece)) + piece + b"\0" * _pad(len(piece))
    return bytes(out)


def _split_on_magic(payload: bytes) -> list[bytes]:
    """Split at 4-byte-aligned occurrences of the magic word, as dmlc-core does."""
    pieces, start = [], 0
    aligned_end = len(payload) - len(payload) % 4
    pos = payload.find(MAGIC_BYTES, 0)
    while 0 <= pos < aligned_end:
        if pos % 4 == 0:
            pieces.append(payload[start:pos])
            start = pos + 4
            pos = payload.find(MAGIC_BYTES, start)
        else:
            pos = payload.find(MAGIC_BYTES, pos + 1)
    pieces.append(payload[start:])
    return pieces


def write_insightface_rec(
    rec_path: str | os.PathLike[str],
    samples: Iterator[tuple[int, bytes]] | list[tuple[int, bytes]],
    num_classes: int | None = None,
    image_size: int = 112,
) -> int:
    """Write images grouped by label in InsightFace layout, plus the `property` file.

    `samples` yields (label, encoded image) sorted by label. Returns the image count.
    """
    rec_path = Path(rec_path)
    rec_path.parent.mkdir(parents=True, exist_ok=True)
    spans: dict[int, list[int]] = {}
    count, last_label = 0, None
    # Record 0 needs the final counts: write a same-sized placeholder, patch it at the end.
    placeholder = encode_record(_header0(0, 0))
    with RecordIOWriter(rec_path) as writer:
        writer.write(0, _header0(0, 0))
        for key, (label, image) in enumerate(samples, start=1):
            if last_label is not None and label < last_label:
                raise ValueError("samples must be sorted by label")
            last_label = label
            span = spans.setdefault(label, [key, key + 1])
            span[1] = key + 1
            writer.write(key, pack(IRHeader(0, float(label), key, 0), image))
            count += 1
        labels = list(spans)
        id_start = count + 1
        for i, label in enumerate(labels):
            first, end = spans[label]
            writer.write(id_start + i, pack(IRHeader(2, np.array([first, end], "<f4"), 0, 0), b""))
    header0 = encode_record(_header0(id_start, id_start + len(labels)))
    if len(header0) != len(placeholder):
        raise RecordIOError("record 0 changed size while patching")
    with open(rec_path, "r+b") as handle:
        handle.write(header0)
    classes = num_classes if num_classes is not None else (max(labels) + 1 if labels else 0)
    (rec_path.parent / "property").write_text(f"{classes},{image_size},{image_size}")
    return count


def _header0(id_start: int, id_end: int) -> bytes:
    return pack(IRHeader(2, np.array([id_start, id_end], "<f4"), 0, 0), b"")


def _key_range(label: np.ndarray, n_records: int, what: str) -> tuple[int, int]:
    """[start, end) from a header's two float labels, checked before anything is allocated:
    whole, finite, ordered and within the file's record count."""
    first, second = (float(v) for v in label[:2])
    if not all(np.isfinite(v) and v == int(v) for v in (first, second)) \
            or not 0 <= first <= second <= n_records:
        raise RecordIOError(f"bad InsightFace header: {what} [{first:g}, {second:g}) for a file of "
                            f"{n_records} records")
    return int(first), int(second)


@dataclass(frozen=True)
class RecLayout:
    """Which keys are images, and the identity records if the file has them."""

    image_keys: np.ndarray
    identity_spans: np.ndarray | None  # (n_identities, 2): [first_key, end_key)


def rec_layout(reader: RecordIOReader) -> RecLayout:
    """InsightFace layout when record 0 is a flag-2 header without image, else plain im2rec."""
    if len(reader) == 0:
        raise RecordIOError(f"no records in {reader.rec_path}")
    header0, image0 = unpack(reader.read_key(int(reader.keys.min())))
    if header0.flag == 2 and not image0:
        id_start, id_end = _key_range(header0.label, len(reader), "identities")
        if id_start == 0:
            raise RecordIOError(f"bad InsightFace header: identities [{id_start}, {id_end})")
        spans = np.empty((id_end - id_start, 2), dtype=np.int64)
        for i, key in enumerate(range(id_start, id_end)):
            try:
                header = reader.header(key)
            except KeyError:
                raise RecordIOError(f"identity record {key} missing from the index") from None
            spans[i] = _key_range(header.label, len(reader), f"identity record {key}") \
                if header.flag >= 2 else (0, 0)
        return RecLayout(np.arange(1, id_start, dtype=np.int64), spans)
    return RecLayout(np.sort(reader.keys), None)


def erase_records(rec_path: str | os.PathLike[str], keys: list[int]) -> int:
    """Overwrite the image bytes of the records with these keys with zeros, in place (an erasure:
    every other record keeps its offset, so the index and other locators stay valid). Records
    erased; their headers (label) remain and they no longer decode as images."""
    if not keys:
        return 0
    with RecordIOReader(rec_path) as reader:
        lookup = _KeyLookup(reader.keys)
        offsets = [int(reader.offsets[lookup[int(k)]]) for k in keys]
        size = reader.size
    with open(rec_path, "r+b") as handle:
        for offset in offsets:
            first = True
            while offset + 8 <= size:
                handle.seek(offset)
                magic, lrec = struct.unpack("<II", handle.read(8))
                if magic != MAGIC:
                    raise RecordIOError(f"bad magic 0x{magic:08X} at offset {offset}: not a RecordIO record")
                cflag, length = lrec >> 29, lrec & LENGTH_MASK
                skip = 0
                if first:
                    (flag,) = struct.unpack("<I", handle.read(4))
                    skip = min(length, IR_HEADER.size + 4 * flag)
                handle.seek(offset + 8 + skip)
                handle.write(b"\0" * (length - skip))
                offset += 8 + length + _pad(length)
                first = False
                if cflag in (0, 3):
                    break
        handle.flush()
        os.fsync(handle.fileno())
    return len(offsets)
