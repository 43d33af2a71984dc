"""Read files the user points at as hostile input: regular files only, with a size cap.

A FIFO named `x.jpg` would block a reader forever and a link to `/dev/zero`
would read without end; both are refused before any byte is read. The file
type is checked on the open descriptor too, so a file swapped after the first
check is caught.
"""

from __future__ import annotations

import os
import stat


def read_regular_file(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; ValueError for anything else
    (OSError when it cannot be opened)."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"not a regular file ({_kind(info.st_mode)})")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"not a regular file ({_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise ValueError(f"larger than {max_bytes} bytes")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    return data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def display_path(path: str | os.PathLike[str]) -> str:
    """A file name as valid UTF-8 text for the manifest: bytes that are not UTF-8 are written
    as \\xNN escapes (`caf\\xe9.jpg`); every other name is unchanged."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
