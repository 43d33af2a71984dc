"""Deterministic directory walk that follows symlinks but never loops."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".tif", ".tiff", ".gif"}
)


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    mtime_ns: int


@dataclass
class WalkStats:
    skipped_other: int = 0
    unreadable_dirs: int = 0


def walk_images(root: Path, stats: WalkStats | None = None) -> Iterator[FileEntry]:
    """Yield image-extension files under `root` in sorted order.

    Directory symlinks are followed, but each real directory (device, inode) is
    entered once, so `a/loop -> ..` terminates. Files with other extensions
    are counted in `stats.skipped_other`.
    """
    stats = stats if stats is not None else WalkStats()
    root = Path(root)
    if root.is_file():
        st = root.stat()
        yield FileEntry(str(root.absolute()), st.st_size, st.st_mtime_ns)
        return
    seen: set[tuple[int, int]] = set()
    stack = [str(root.absolute())]
    while stack:
        directory = stack.pop()
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            stats.unreadable_dirs += 1
            continue
        subdirs = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=True):
                    subdirs.append(entry.path)
                    continue
                if os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                    stats.skipped_other += 1
                    continue
                est = entry.stat(follow_symlinks=True)
            except OSError:
                stats.skipped_other += 1
                continue
            yield FileEntry(entry.path, est.st_size, est.st_mtime_ns)
        stack.extend(reversed(subdirs))


def is_uri(path: str | os.PathLike[str]) -> bool:
    """`scheme://...` inputs (file://, s3://, gs://, hdfs://, ...) go through pyarrow's filesystems."""
    return "://" in str(path)


def walk_uri(uri: str, stats: WalkStats | None = None) -> Iterator[FileEntry]:
    """Image files under a filesystem URI, sorted, each recorded as a URI (what the user gave,
    extended by the relative path): the same entries `walk_images` yields for local paths."""
    import pyarrow.fs as pafs

    stats = stats if stats is not None else WalkStats()
    filesystem, base = pafs.FileSystem.from_uri(uri)
    prefix = uri[: len(uri) - len(base)] if uri.endswith(base) else uri.split("://", 1)[0] + "://"
    top = filesystem.get_file_info(base)
    infos = [top] if top.type == pafs.FileType.File else \
        filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pafs.FileType.File:
            continue
        if os.path.splitext(info.base_name)[1].lower() not in IMAGE_EXTENSIONS:
            stats.skipped_other += 1
            continue
        yield FileEntry(prefix + info.path, info.size or 0, info.mtime_ns or 0)


def read_uri(uri: str, max_bytes: int) -> bytes:
    """The bytes of the file at `uri`, at most `max_bytes` (ValueError beyond)."""
    import pyarrow.fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(uri)
    with filesystem.open_input_stream(path) as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    return data
