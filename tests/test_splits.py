"""`wb split`: what a decision about one face means for its duplicates."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from tests.helpers import curated_workspace, manifest_rows, wb_json
from workbench.manifest import reviews


@pytest.fixture(scope="module")
def copied(tmp_path_factory) -> tuple[Path, str, str]:
    """A curated workspace and one duplicate group of two faces: (workspace, original, copy)."""
    ws = curated_workspace(tmp_path_factory.mktemp("splits"), identities=3, per_identity=3, web=6,
                           prefix="p", seed=7, near_duplicates=1)
    (original,), (copy,) = (
        manifest_rows(ws, "SELECT f.face_id FROM wb_faces f JOIN wb_images i USING (image_id) "
                          f"WHERE i.path LIKE '%/{name}'") for name in ("0.png", "0-copy.jpg"))
    groups = manifest_rows(ws, "SELECT group_id FROM dups WHERE face_id IN (?, ?)", [original[0], copy[0]])
    assert groups[0] == groups[1], "the re-encoded copy is a duplicate of its photo"
    return ws, original[0], copy[0]


def set_decisions(ws: Path, decisions: dict[str, str], representative: str) -> None:
    """What overlap might have decided for each face (a small copy's embedding can drift out of
    its identity's reach), and which face dedupe chose to represent their group."""
    con = duckdb.connect(str(ws / "manifests" / "wb.duckdb"))
    for face, decision in decisions.items():
        con.execute("UPDATE overlap SET decision = ? WHERE face_id = ?", [decision, face])
        con.execute("UPDATE dups SET is_representative = (face_id = ?) WHERE face_id = ?",
                    [representative, face])
    con.close()


def split_of(ws: Path, *faces: str) -> list[tuple[str, str | None]]:
    rows = dict((f, (s, r)) for f, s, r in manifest_rows(ws, "SELECT face_id, split, reason FROM wb_splits "
                                                             "WHERE face_id IS NOT NULL"))
    return [rows[f] for f in faces]


@pytest.mark.parametrize("decided", ["original", "copy"])
def test_a_known_face_excludes_its_duplicates_whichever_represents_them(copied, tmp_path, decided):
    """The representative is the best-quality face of the group, not the one overlap caught: a known
    person's photo must not reach train_unlabeled as its own clean copy."""
    base, original, copy = copied
    ws = tmp_path / "ws"
    shutil.copytree(base, ws)
    known, other = (original, copy) if decided == "original" else (copy, original)
    set_decisions(ws, {known: "overlap", other: "clean"}, representative=other)
    wb_json("split", "-w", str(ws), "--min-quality", "0")
    assert split_of(ws, known, other) == [("excluded", "overlap"), ("excluded", "overlap")]

    # a reviewer who says the caught face is not that person (`wb review pull` records it so)
    # lifts it for the whole group
    con = duckdb.connect(str(ws / "manifests" / "wb.duckdb"))
    reviews.record(con, [(known, "wrong_identity", datetime.now(), "test", None)], [])
    con.close()
    wb_json("split", "-w", str(ws), "--min-quality", "0", "--eval-unknown", "0")
    assert split_of(ws, known, other) == [("excluded", "duplicate"), ("train_unlabeled", None)]
