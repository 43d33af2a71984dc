"""What commands return: typed results, shown by the CLI as tables or JSON and stored with the run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Result:
    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, as `--json` prints them and the `runs` table keeps them."""
        return asdict(self)
