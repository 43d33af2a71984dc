"""The one error type the CLI turns into a one-line message and exit code 1, and the one
environmental failure every command shares: a full disk."""

from __future__ import annotations

import errno
import os
import re
import shutil

NO_SPACE = "No space left on device"


class WorkbenchError(Exception):
    """A user-facing failure: bad input, unusable workspace, busy manifest."""


def first_line(exc: BaseException) -> str:
    """What a library's exception says, kept to one line (its first), or its type's name when it
    says nothing: the reason a one-line WorkbenchError gives."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def disk_full(exc: BaseException, where: str | None = None) -> str | None:
    """A one-line message if `exc` (or what caused it) is a full disk, else None.

    Python raises OSError(ENOSPC) with the file's name; DuckDB wraps the same failure in its
    own exceptions, naming the file in the text. Either way the message names the file, how
    much it holds and what is free, and says that committed work is kept. `where`: the folder
    to name when no exception names a file (the workspace)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    path: str | None = None
    found = False
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            found, path = True, path or (str(current.filename) if current.filename else None)
        elif NO_SPACE in str(current):
            found = True
            match = re.search(r"""["']?(/[^\s"':]+)["']?:? *(?:No space|.*No space)""", str(current))
            path = path or (match.group(1) if match else None)
        current = current.__cause__ or current.__context__
    if not found:
        return None
    target = path or where
    held = f", which holds {_size(os.path.getsize(path))}" if path and os.path.isfile(path) else ""
    free = ""
    if target:
        folder = target if os.path.isdir(target) else os.path.dirname(target) or "."
        try:
            free = f"; {_size(shutil.disk_usage(folder).free)} free there"
        except OSError:
            free = ""
    return (f"disk full: no space left writing {target or 'the workspace'}{held}{free}. "
            "What was committed is kept: "
            "free some space and run the same command to resume")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
