"""Labeled-set registrations added and removed with what derived from them reaching the App too.

`labeled/registry.py` removes the manifest's rows of a registration; the App
datasets that showed it live in FiftyOne's database, which only `browse`
reaches. These entry points do both: a removal deletes the App datasets first,
so an unreachable App database stops it before the manifest changed; a
replacement deletes them after the new registration committed (they showed
the old one, which the manifest no longer knows).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from workbench.browse.sync import delete_datasets
from workbench.labeled import registry
from workbench.labeled.register import LabeledSetSummary, RemovedSet, register_labeled, remove_set
from workbench.manifest.workspace import Workspace


def run_labeled_add(workspace: Workspace, name: str, path: str | os.PathLike[str],
                    **options: Any) -> LabeledSetSummary:
    """`wb labeled add`: `register_labeled`, then the App datasets of a replaced registration go."""
    summary = register_labeled(workspace, name, path, **options)
    if summary.replaced_app_datasets:
        summary = replace(summary, replaced_app_datasets=delete_datasets(summary.replaced_app_datasets))
    return summary


def run_labeled_remove(workspace: Workspace, name: str) -> RemovedSet:
    """`wb labeled remove`: the set's App datasets, then its registration and derived rows."""
    with workspace.connect(read_only=True) as con:
        datasets = registry.app_datasets(con, registry.get(con, name))
    delete_datasets(datasets)
    return remove_set(workspace, name)
