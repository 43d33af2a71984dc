"""What a mapped read may make resident, and where a reader releases the map (hand-computed)."""

from __future__ import annotations

import numpy as np

from workbench.formats import mapped
from workbench.formats.mapped import FOLIO_BYTES, read_costs, segments

KIB, MIB = 1 << 10, 1 << 20


def test_a_scan_costs_its_bytes_and_a_scattered_read_a_folio():
    offsets = np.array([0, 4 * KIB, 8 * KIB, 10 * MIB, 4 * KIB, 4 * KIB + 100])
    assert read_costs(offsets).tolist() == [FOLIO_BYTES, 4 * KIB, 4 * KIB, FOLIO_BYTES, FOLIO_BYTES, 100]
    assert read_costs(np.array([], np.int64)).tolist() == []


def test_runs_end_where_their_costs_pass_the_budget(monkeypatch):
    monkeypatch.setattr(mapped, "RESIDENT_BYTES", 4 * MIB)
    # costs 2M, 4K, 4K, 2M, 2M: totals 2M, 2M+4K, 2M+8K, 4M+8K, 6M+8K; the fourth passes 4M
    offsets = np.array([0, 4 * KIB, 8 * KIB, 10 * MIB, 4 * KIB])
    assert [(s.start, s.stop) for s in segments(offsets)] == [(0, 3), (3, 5)]
    # scattered reads each cost a folio: two fit the budget
    scattered = np.arange(7) * 64 * MIB
    assert [(s.start, s.stop) for s in segments(scattered)] == [(0, 2), (2, 4), (4, 6), (6, 7)]
    assert list(segments(np.array([], np.int64))) == []
