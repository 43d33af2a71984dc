"""Verification protocols as text: LFW's `pairs.txt` and the files made like it.

A header line `FOLDS PER_FOLD` (LFW View 2: `10 300`), then per fold PER_FOLD
same-person lines `name i j` followed by PER_FOLD different-person lines
`name1 i name2 j`; image `i` of `name` is `name/name_000i.jpg` under the image
folder. Without a header the lines are cut into 10 folds in order. Pairs whose
images are not in the folder are left out and counted, so a protocol can run on
the part of a set one has (and say how much that is).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.errors import WorkbenchError
from workbench.formats.files import read_regular_file

MAX_BYTES = 64 << 20  # LFW's pairs.txt is 100 kB; 64 MB holds millions of pairs
DEFAULT_FOLDS = 10


@dataclass(frozen=True)
class PairsList:
    left: list[Path]
    right: list[Path]
    issame: np.ndarray  # (n,) bool
    folds: np.ndarray  # (n,) int, the protocol's own folds
    listed: int  # pairs in the file, with those left out
    missing_images: int  # distinct images named but not in the folder

    @property
    def files(self) -> list[Path]:
        """Each image once, in a stable order."""
        return sorted(set(self.left) | set(self.right))


def image_path(images: Path, name: str, number: str) -> Path:
    if not number.isdigit() or "/" in name or "\\" in name or name in ("", ".", ".."):
        raise ValueError(f"not a name and image number: {name!r} {number!r}")
    return images / name / f"{name}_{int(number):04d}.jpg"


def read_pairs_txt(path: Path, images: Path) -> PairsList:
    """The pairs of `path` whose two images are both under `images`."""
    try:
        text = read_regular_file(path, MAX_BYTES).decode("utf-8")
    except (OSError, ValueError) as exc:
        raise WorkbenchError(f"cannot read pairs file {path}: {exc}") from None
    if not images.is_dir():
        raise WorkbenchError(f"image folder {images} not found (--images: the folder of name/ folders)")
    rows = [line.split() for line in text.splitlines() if line.strip()]
    per_fold = None
    if rows and len(rows[0]) == 2 and all(v.isdigit() for v in rows[0]):
        n_folds, per_fold = int(rows[0][0]), int(rows[0][1])
        rows = rows[1:]
        if n_folds * per_fold * 2 != len(rows):
            raise WorkbenchError(f"{path}: the header says {n_folds} folds of {per_fold} + {per_fold} "
                                 f"pairs, the file has {len(rows)} pair lines")
    left, right, same, folds = [], [], [], []
    exists: dict[Path, bool] = {}
    for number, row in enumerate(rows):
        try:
            if len(row) == 3:
                a, b = image_path(images, row[0], row[1]), image_path(images, row[0], row[2])
            elif len(row) == 4:
                a, b = image_path(images, row[0], row[1]), image_path(images, row[2], row[3])
            else:
                raise ValueError(f"{len(row)} fields")
        except ValueError as exc:
            raise WorkbenchError(f"{path}: pair line {number + 1} is not 'name i j' or "
                                 f"'name1 i name2 j' ({exc})") from None
        for p in (a, b):
            if p not in exists:
                exists[p] = p.is_file()
        if exists[a] and exists[b]:
            left.append(a)
            right.append(b)
            same.append(len(row) == 3)
            folds.append(number // (2 * per_fold) if per_fold else number * DEFAULT_FOLDS // len(rows))
    if not left:
        raise WorkbenchError(f"none of the {len(rows)} pairs of {path} has both images under {images}")
    return PairsList(left, right, np.array(same), np.array(folds), len(rows),
                     sum(not found for found in exists.values()))
