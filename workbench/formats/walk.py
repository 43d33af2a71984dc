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
