"""Labeled sets as sources of (label, locator, bytes): RecordIO, identity folders, HF datasets.

A locator is what finds one sample again: a record key, a path relative to the
set's root, or a dataset row index. Sources stream in storage order for
registration and read single samples by locator for later stages.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from workbench.errors import WorkbenchError
from workbench.formats.files import read_regular_file
from workbench.formats.recordio import RecordIOError, RecordIOReader, rec_layout, unpack
from workbench.formats.walk import walk_images

FORMATS = ("rec", "folder", "hf")
MAX_IMAGE_BYTES = 64 << 20  # one labeled face photo
MIN_LABEL_LIMIT = 1 << 20  # labels up to this are always plausible


@dataclass
class Sample:
    label: int | None
    locator: str
    data: bytes | None
    reason: str | None = None


@dataclass
class SourceNotes:
    """Problems found while streaming that concern identities rather than samples."""

    empty_identities: list[str] = field(default_factory=list)


class LabeledSource(Protocol):
    format: str
    identities: list[str]
    notes: SourceNotes

    def stream(self) -> Iterator[Sample]: ...

    def read(self, locator: str) -> bytes: ...

    def close(self) -> None: ...


def detect_format(path: Path) -> str:
    """`rec` for train.rec/.idx/property, `hf` for save_to_disk or parquet, else `folder`."""
    if path.is_file():
        if path.suffix == ".rec":
            return "rec"
        if path.suffix == ".parquet":
            return "hf"
        raise WorkbenchError(f"cannot tell the format of {path}; pass --format rec|folder|hf")
    if not path.is_dir():
        raise WorkbenchError(f"no such file or directory: {path}")
    names = set(os.listdir(path))
    if any(n.endswith(".rec") for n in names):
        return "rec"
    if {"dataset_info.json", "state.json", "dataset_dict.json"} & names or any(
        n.endswith(".parquet") for n in names
    ):
        return "hf"
    return "folder"


def open_source(
    path: Path, fmt: str, *, image_column: str = "image", label_column: str = "label",
    cache_dir: Path | None = None, outside_paths: bool = False,
) -> LabeledSource:
    if fmt == "rec":
        return RecSource(path)
    if fmt == "folder":
        return FolderSource(path)
    if fmt == "hf":
        return HFSource(path, image_column, label_column, cache_dir, outside_paths)
    raise WorkbenchError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def open_registered(path: Path, fmt: str, options: dict[str, Any], cache_dir: Path | None = None
                    ) -> LabeledSource:
    """The source of a registered set, opened as it was registered (`options` as stored)."""
    return open_source(path, fmt, image_column=options.get("image_column", "image"),
                       label_column=options.get("label_column", "label"), cache_dir=cache_dir,
                       outside_paths=bool(options.get("outside_paths", False)))


class RecSource:
    """InsightFace RecordIO: `train.rec`, `train.idx`, `property` (num_classes,h,w)."""

    format = "rec"
    BATCH = 16384

    def __init__(self, path: Path):
        rec = path if path.is_file() else _single(path, "*.rec")
        self.reader = RecordIOReader(rec)
        self.layout = rec_layout(self.reader)
        # Identities are a list in memory: a class count or label far beyond what the file can
        # hold is an error, not a 2-billion-entry allocation.
        self.max_scanned_label = max(MIN_LABEL_LIMIT, 2 * len(self.reader))
        self.num_classes = _read_property(rec.parent / "property", self.max_scanned_label)
        n_ids = self.num_classes
        if n_ids is None and self.layout.identity_spans is not None:
            n_ids = len(self.layout.identity_spans)
        self._labels_from_scan = n_ids is None
        self.identities = [str(i) for i in range(n_ids or 0)]
        self.notes = SourceNotes()
        if self.layout.identity_spans is not None:
            spans = self.layout.identity_spans
            self.notes.empty_identities = [str(i) for i in np.flatnonzero(spans[:, 1] <= spans[:, 0])]

    def stream(self) -> Iterator[Sample]:
        seen: set[int] = set()
        for start in range(0, len(self.layout.image_keys), self.BATCH):
            keys = self.layout.image_keys[start : start + self.BATCH]
            try:
                # Vectorised header parsing; a damaged batch is redone record by record.
                records = [(k, v, bytes(img)) for k, v, img in self.reader.iter_images(keys)]
            except (RecordIOError, KeyError):
                records = list(self._one_by_one(keys))
            for key, value, image in records:
                sample = self._sample(key, value, image)
                if sample.label is not None:
                    seen.add(sample.label)
                yield sample
        if self._labels_from_scan:
            self.identities = [str(i) for i in range(max(seen) + 1 if seen else 0)]
            self.notes.empty_identities = [str(i) for i in sorted(set(range(len(self.identities))) - seen)]

    def _one_by_one(self, keys: np.ndarray) -> Iterator[tuple[int, float | str, bytes | None]]:
        for key in keys.tolist():
            try:
                header, image = unpack(self.reader.read_key(key))
            except (RecordIOError, KeyError) as exc:
                yield key, f"corrupt record ({exc})", None
                continue
            yield key, header.class_label, image

    def _sample(self, key: int, value: float | str, image: bytes | None) -> Sample:
        if isinstance(value, str):
            return Sample(None, str(key), None, value)
        limit = self.max_scanned_label if self._labels_from_scan else len(self.identities)
        if not np.isfinite(value) or value != int(value) or not 0 <= value < limit:
            return Sample(None, str(key), image, f"label out of range ({value:g})")
        return Sample(int(value), str(key), image)

    def read(self, locator: str) -> bytes:
        return unpack(self.reader.read_key(int(locator)))[1]

    def close(self) -> None:
        self.reader.close()


class FolderSource:
    """`<identity>/<image>` trees; identities are the sorted folder names, labels their order."""

    format = "folder"

    def __init__(self, path: Path):
        if not path.is_dir():
            raise WorkbenchError(f"not a folder: {path}")
        self.root = path
        self.identities = sorted(e.name for e in os.scandir(path) if e.is_dir())
        if not self.identities:
            raise WorkbenchError(f"no identity folders under {path} (expected <identity>/<image>)")
        self.notes = SourceNotes()

    def stream(self) -> Iterator[Sample]:
        for label, identity in enumerate(self.identities):
            count = 0
            for entry in walk_images(self.root / identity):
                locator = os.path.relpath(entry.path, self.root)
                try:
                    data = read_regular_file(entry.path, MAX_IMAGE_BYTES)
                except OSError as exc:
                    yield Sample(label, locator, None, f"unreadable: {exc.strerror or exc}")
                    continue
                except ValueError as exc:
                    yield Sample(label, locator, None, str(exc))
                    continue
                count += 1
                yield Sample(label, locator, data)
            if count == 0:
                self.notes.empty_identities.append(identity)

    def read(self, locator: str) -> bytes:
        return read_regular_file(self.root / locator, MAX_IMAGE_BYTES)

    def close(self) -> None:
        return None


VALIDATE_FULL = False  # structure only: lengths, offsets, buffer sizes (no pass over the data)


class HFSource:
    """A Hugging Face `datasets` dataset: a `save_to_disk` folder or parquet files.

    `datasets` and Arrow read the files with native code that can fail in any way on a damaged
    or crafted file (negative sizes, bad UTF-8, unsupported types); every such failure is one
    line naming the dataset, never a traceback. An image given by path (`{"path": ...}`) is read
    only inside the dataset's folder, unless `outside_paths` allows any local file.
    """

    format = "hf"
    BATCH = 512

    def __init__(self, path: Path, image_column: str, label_column: str, cache_dir: Path | None,
                 outside_paths: bool = False):
        self.path = path
        self.root = (path if path.is_dir() else path.parent).resolve()
        self.outside_paths = outside_paths
        with self._guard("open"):
            self._open(path, image_column, label_column, cache_dir)

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except WorkbenchError:
            raise
        except Exception as exc:  # native readers raise anything on hostile bytes
            first = (str(exc).splitlines() or [""])[0][:200]
            raise WorkbenchError(f"cannot {what} the Hugging Face dataset at {self.path}: "
                                 f"{type(exc).__name__}: {first}") from None

    def _open(self, path: Path, image_column: str, label_column: str, cache_dir: Path | None) -> None:
        import datasets

        datasets.disable_progress_bars()
        if path.is_dir() and not any(path.glob("*.parquet")):
            ds = datasets.load_from_disk(str(path))
        else:
            files = [str(path)] if path.is_file() else sorted(str(p) for p in path.rglob("*.parquet"))
            ds = datasets.Dataset.from_parquet(files, cache_dir=str(cache_dir) if cache_dir else None)
        if isinstance(ds, datasets.DatasetDict):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        # Arrow trusts the lengths and offsets a file states and aborts the process (not an
        # exception) on impossible ones when a batch is sliced later: check them first.
        ds.data.table.validate(full=VALIDATE_FULL)
        for column in (image_column, label_column):
            if column not in ds.column_names:
                raise WorkbenchError(
                    f"column {column!r} not in the dataset (columns: {', '.join(ds.column_names)}); "
                    "use --image-column/--label-column"
                )
        if isinstance(ds.features[image_column], datasets.Image):
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        self.ds = ds
        self.image_column = image_column
        feature = ds.features[label_column]
        raw = ds.data.column(label_column).to_numpy(zero_copy_only=False)
        if isinstance(feature, datasets.ClassLabel):
            self.identities = list(feature.names)
            self.labels = raw.astype(np.int64)
        else:
            names, self.labels = np.unique(raw.astype(str), return_inverse=True)
            self.identities = [str(n) for n in names]
        self.notes = SourceNotes()

    def _bytes(self, value: object) -> bytes:
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"]
            if value.get("path"):
                return read_regular_file(self._inside(str(value["path"])), MAX_IMAGE_BYTES)
        if isinstance(value, bytes | bytearray):
            return bytes(value)
        raise ValueError("no image bytes")

    def _inside(self, text: str) -> Path:
        """An image path resolved against the dataset's folder; outside it only if allowed."""
        target = (self.root / text).resolve()
        if not self.outside_paths and not target.is_relative_to(self.root):
            raise ValueError(f"image path outside the dataset folder: {text[:100]}")
        return target

    def stream(self) -> Iterator[Sample]:
        with self._guard("read"):
            images = self.ds.select_columns([self.image_column])
            n = len(images)
        for start in range(0, n, self.BATCH):
            with self._guard(f"read rows {start}-{min(start + self.BATCH, n) - 1} of"):
                batch = images[start : start + self.BATCH][self.image_column]
            for offset, value in enumerate(batch):
                row = start + offset
                label = int(self.labels[row])
                if not 0 <= label < len(self.identities):
                    yield Sample(None, str(row), None, f"label out of range ({label})")
                    continue
                try:
                    yield Sample(label, str(row), self._bytes(value))
                except (ValueError, OSError) as exc:
                    yield Sample(label, str(row), None, f"no image bytes ({exc})")
        present = set(np.unique(self.labels).tolist())
        self.notes.empty_identities = [n for i, n in enumerate(self.identities) if i not in present]

    def read(self, locator: str) -> bytes:
        with self._guard(f"read row {locator} of"):
            value = self.ds[int(locator)][self.image_column]
        return self._bytes(value)

    def close(self) -> None:
        return None


def _single(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise WorkbenchError(f"no {pattern} in {folder}")
    preferred = [p for p in found if p.stem == "train"]
    return (preferred or found)[0]


def _read_property(path: Path, limit: int) -> int | None:
    """`property` holds 'num_classes,height,width'; absent for plain im2rec files."""
    if not path.exists():
        return None
    try:
        text = read_regular_file(path, 4096).decode("ascii")
        num_classes = int(text.strip().split(",")[0])
    except (ValueError, OSError, UnicodeDecodeError):
        raise WorkbenchError(f"malformed property file {path}: expected 'num_classes,h,w'") from None
    if not 0 < num_classes <= limit:
        raise WorkbenchError(f"property file {path} says {num_classes} classes: not plausible for "
                             f"a file of at most {limit // 2} records")
    return num_classes
