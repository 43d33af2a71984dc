"""Read a registered labeled set's samples back: the aligned crop bytes of each sample."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from workbench.errors import WorkbenchError
from workbench.formats.labeled import LabeledSource, open_source
from workbench.manifest.query import one
from workbench.manifest.workspace import Workspace


class LabeledSet:
    """A registered set: its ok samples as columns, and their crops by position."""

    def __init__(self, workspace: Workspace, con: duckdb.DuckDBPyConnection, name: str):
        row = one(con, "SELECT path, format, aligned, options FROM labeled_sets WHERE name = ?",
                  [name])
        if row is None:
            raise WorkbenchError(f"no labeled set named {name!r}; see `wb labeled list`")
        self.name, self.workspace = name, workspace
        self.path, self.format, self.aligned = Path(row[0]), row[1], row[2]
        self.options = json.loads(row[3] or "{}")
        self.samples: pa.Table = con.sql(
            "SELECT sample_idx, label, locator, crop_rel FROM labeled_samples "
            "WHERE set_name = $name AND status = 'ok' ORDER BY sample_idx",
            params={"name": name}).to_arrow_table()
        self.identities = [r[0] for r in con.execute(
            "SELECT identity FROM labeled_identities WHERE set_name = ? ORDER BY label", [name]
        ).fetchall()]
        self._source: LabeledSource | None = None

    @property
    def labels(self) -> np.ndarray:
        return self.samples.column("label").to_numpy()

    def __len__(self) -> int:
        return self.samples.num_rows

    def crop_bytes(self, position: int) -> bytes:
        """Encoded aligned crop of the sample at `position` in `samples`."""
        crop_rel = self.samples.column("crop_rel")[position].as_py()
        if crop_rel is not None:
            return (self.workspace.root / crop_rel).read_bytes()
        if self._source is None:
            self._source = open_source(
                self.path, self.format,
                image_column=self.options.get("image_column", "image"),
                label_column=self.options.get("label_column", "label"),
                cache_dir=self.workspace.root / "cache" / "hf")
        return self._source.read(self.samples.column("locator")[position].as_py())

    def close(self) -> None:
        if self._source is not None:
            self._source.close()


def only_labeled_set(con: duckdb.DuckDBPyConnection) -> str | None:
    """The labeled set to use when the user names none: the only one registered, else None."""
    names = [r[0] for r in con.execute("SELECT name FROM labeled_sets ORDER BY name").fetchall()]
    return names[0] if len(names) == 1 else None
