"""Manifests written by every earlier schema version upgrade through today's migrations intact.

The fixtures are real: `tests/fixtures/manifests/make.py` checked out the last
commit of each schema version and let that version's own `wb` write them.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import duckdb
import pytest

from tests.helpers import curated_workspace, manifest_rows, wb_json
from workbench.manifest.schema import MIGRATIONS, current_version
from workbench.manifest.views import VIEWS
from workbench.manifest.workspace import Workspace

FIXTURES = Path(__file__).parent / "fixtures" / "manifests"
LATEST = MIGRATIONS[-1][0]
VERSIONS = sorted(int(p.name[1:].split(".")[0]) for p in FIXTURES.glob("v*.duckdb.gz"))
VIEW_NAMES = [re.search(r"VIEW (\w+)", v).group(1) for v in VIEWS]


def unpack(version: int, root: Path) -> tuple[Workspace, dict[str, int]]:
    ws = Workspace(root)
    ws.manifest_path.parent.mkdir(parents=True)
    with gzip.open(FIXTURES / f"v{version}.duckdb.gz", "rb") as src, open(ws.manifest_path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return ws, json.loads((FIXTURES / f"v{version}.json").read_text())["rows"]


def test_there_is_a_fixture_for_every_earlier_version():
    assert list(range(1, LATEST)) == VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
def test_an_old_manifest_upgrades_with_every_row_kept(tmp_path, version):
    ws, rows = unpack(version, tmp_path)
    with ws.connect(read_only=True) as con:
        assert con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == version
    with ws.connect() as con:
        assert current_version(con) == LATEST
        data = {t: n for t, n in rows.items() if t != "schema_migrations"}
        assert {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in data} == data
        for view in VIEW_NAMES:
            con.execute(f"SELECT * FROM {view}").fetchall()
        if rows.get("faces"):
            # columns added later read as unknown for old rows, not as made-up values
            assert con.execute("SELECT count(*) FROM faces WHERE detector IS NOT NULL").fetchone()[0] == 0
    with ws.connect() as con:  # a second open applies nothing twice
        assert con.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == LATEST


@pytest.mark.parametrize("version", VERSIONS[-1:])
def test_commands_run_on_an_upgraded_manifest(tmp_path, version):
    ws, rows = unpack(version, tmp_path)
    with ws.connect():
        pass
    status = wb_json("status", "-w", str(ws.root))
    assert (status["images"], status["faces"]) == (rows["images"], rows["faces"])


@pytest.mark.slow
def test_a_workspace_from_before_mirrored_hashes_gets_them_from_its_crops(tmp_path):
    """Faces and images ingested before schema 12 have no mirrored hashes: `wb dedupe` reads the
    faces' from their crop files (what ingest stores, up to a JPEG decoder's rounding) and finds
    the same groups."""
    ws = curated_workspace(tmp_path, identities=3, per_identity=3, web=6, prefix="p", seed=7,
                           near_duplicates=2)
    fresh = manifest_rows(ws, "SELECT face_id, crop_phash_mirror FROM faces ORDER BY face_id")
    before = wb_json("dedupe", "-w", str(ws))
    assert all(m is not None for _, m in fresh) and before["duplicate_pairs"] >= 2
    con = duckdb.connect(str(ws / "manifests" / "wb.duckdb"))
    con.execute("UPDATE faces SET crop_phash_mirror = NULL")
    con.execute("UPDATE images SET phash_mirror = NULL")
    con.close()
    after = wb_json("dedupe", "-w", str(ws))
    filled = manifest_rows(ws, "SELECT face_id, crop_phash_mirror FROM faces ORDER BY face_id")
    assert [f for f, _ in filled] == [f for f, _ in fresh]
    bits = [(m ^ n).bit_count() for (_, m), (_, n) in zip(filled, fresh, strict=True)]
    assert max(bits) <= 4 and bits.count(0) >= len(bits) - 2  # the two JPEG copies may round
    assert [after[k] for k in ("duplicate_pairs", "duplicates")] == \
        [before[k] for k in ("duplicate_pairs", "duplicates")]
