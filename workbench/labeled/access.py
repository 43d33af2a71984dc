"""Read a registered labeled set's samples back: the aligned crop bytes of each sample."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from workbench.formats.labeled import LabeledSource, open_registered
from workbench.labeled import registry
from workbench.manifest.workspace import Workspace


class LabeledSet:
    """A registered set: its ok samples as columns, and their crops by position.

    A context manager: the source it reads crops from (a RecordIO file, a dataset) is closed
    on leaving."""

    def __init__(self, workspace: Workspace, con: duckdb.DuckDBPyConnection, name: str):
        self.registration = registry.get(con, name)
        self.name, self.workspace = name, workspace
        self.path, self.format = Path(self.registration.path), self.registration.format
        self.aligned, self.options = self.registration.aligned, self.registration.options
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
        return self._read(position)

    def photo_bytes(self, position: int) -> bytes:
        """Encoded photo the sample's face was found in (its crop, for a set registered aligned):
        what a web copy of it would share whole. Raises OSError or ValueError if it is gone."""
        return self.crop_bytes(position) if self.aligned else self._read(position)

    def _read(self, position: int) -> bytes:
        if self._source is None:
            self._source = open_registered(self.path, self.format, self.options,
                                           cache_dir=self.workspace.root / "cache" / "hf")
        return self._source.read(self.samples.column("locator")[position].as_py())

    def item_ids(self, positions: np.ndarray | None = None) -> list[str]:
        """Vector and review keys of the samples at `positions` (all when None)."""
        sample_idx = self.samples.column("sample_idx").to_numpy()
        return self.registration.item_ids(sample_idx if positions is None else sample_idx[positions])

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    def __enter__(self) -> LabeledSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
