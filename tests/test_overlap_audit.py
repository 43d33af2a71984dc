"""`wb audit overlap`'s recall by identity size, against hand-counted values."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.curate.audit import recall_by_size
from workbench.curate.calibration import wilson


def test_recall_is_given_per_identity_size_with_intervals_counted_by_identity():
    sizes = np.array([2, 3, 3, 5, 12, 40, 40])  # the planted faces' identities' labeled faces
    identities = np.array([0, 1, 1, 2, 3, 4, 4])
    flagged = np.array([True, False, True, True, False, True, True])
    bins = recall_by_size(sizes, identities, flagged)
    assert list(bins) == ["2-3", "4-9", "10-29", "30+"]
    assert bins["2-3"]["planted"] == 3 and bins["2-3"]["identities"] == 2
    assert bins["2-3"]["recall_excluded"] == pytest.approx(2 / 3)
    assert bins["2-3"]["recall_excluded_95ci"] == wilson(1, 2)  # 2/3 of two people
    assert [bins[b]["recall_excluded"] for b in ("4-9", "10-29", "30+")] == [1.0, 0.0, 1.0]
    assert bins["30+"]["planted"] == 2 and bins["30+"]["identities"] == 1
    # the bins' faces are all the planted faces, and their recalls average to the overall one
    assert sum(b["planted"] for b in bins.values()) == len(sizes)
    assert sum(b["planted"] * b["recall_excluded"] for b in bins.values()) == pytest.approx(flagged.sum())


def test_sizes_with_no_planted_face_are_left_out():
    bins = recall_by_size(np.array([6, 7]), np.array([0, 1]), np.array([True, True]))
    assert list(bins) == ["4-9"] and bins["4-9"]["recall_excluded"] == 1.0
