"""`wb browse`: mirror the manifest into a FiftyOne dataset, one sample per face crop.

The dataset mirrors a selection of faces (all, or `--where`): a sync first
pulls reviewers' tags into the manifest, then adds new faces, updates only the
values that changed (bulk writes), and deletes samples whose
faces left the selection or were erased. Samples keep their ids and tags, so
a re-sync never duplicates anything and never loses a review.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from workbench.browse.app import database_label, load_fiftyone
from workbench.browse.fields import sample_schema
from workbench.browse.raw_writer import Facts, RawWriter
from workbench.browse.reviews import ReviewPull, pull_reviews
from workbench.browse.selection import face_facts, latest_score_run
from workbench.embed.store import read_vectors
from workbench.errors import WorkbenchError
from workbench.faces.quality import MIN_QUALITY
from workbench.labeled.registry import UNLABELED_ITEMS_SQL
from workbench.manifest.query import one, transaction
from workbench.manifest.reviews import tags_of
from workbench.manifest.runs import open_run
from workbench.manifest.workspace import Workspace
from workbench.results import Result

PLOT_KEY = "face_embeddings"


def default_dataset_name(workspace: Workspace) -> str:
    digest = hashlib.sha1(str(workspace.root).encode()).hexdigest()[:6]
    return f"wb-{workspace.root.name}-{digest}"


def open_dataset(fo: Any, name: str, workspace: Workspace,
                 schema: dict[str, tuple[Any, dict[str, Any]]] | None = None) -> Any:
    """The persistent dataset `name` with the fields of `schema` (default: the face fields),
    refusing one that mirrors another workspace."""
    if fo.dataset_exists(name):
        dataset = fo.load_dataset(name)
        owner = dataset.info.get("workbench_root")
        if owner and owner != str(workspace.root):
            raise WorkbenchError(f"FiftyOne dataset {name!r} mirrors workspace {owner}; "
                                 "choose another --dataset")
    else:
        dataset = fo.Dataset(name, persistent=True)
        dataset.info["workbench_root"] = str(workspace.root)
        dataset.save()
    present = dataset.get_field_schema()
    for field, (ftype, kwargs) in (sample_schema(fo) if schema is None else schema).items():
        if field not in present:
            dataset.add_sample_field(field, ftype, **kwargs)
    dataset.create_index("face_id", unique=True)
    return dataset


def save_views(fo: Any, dataset: Any) -> list[str]:
    """The views reviewers start from, saved on the dataset (rewritten each sync)."""
    F = fo.ViewField
    views = {
        "overlaps-to-review": dataset.match(F("overlap_decision").is_in(["copy", "overlap", "ambiguous"]))
        .sort_by("overlap_score", reverse=True),
        "duplicates": dataset.match(F("dup_group_size") > 1).sort_by("dup_group"),
        "hardest-unknowns": dataset.match(F("split").is_in(["train_unlabeled", "eval_unknown"])
                                          & F("max_prob").exists()).sort_by("max_prob", reverse=True),
        "low-quality": dataset.match(F("quality") < MIN_QUALITY).sort_by("quality"),
    }
    for name, view in views.items():
        dataset.save_view(name, view, overwrite=True)
    return sorted(views)


def plot_model(con: duckdb.DuckDBPyConnection) -> str | None:
    """The embedding model curation used: the one behind the clusters, else the most used on faces."""
    row = one(con, "SELECT any_value(model_key) FROM clusters")
    if row and row[0]:
        return row[0]
    row = one(con, f"SELECT model_key FROM embeddings WHERE {UNLABELED_ITEMS_SQL} "
                   "GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
    return row[0] if row else None


def embeddings_plot(workspace: Workspace, con: duckdb.DuckDBPyConnection, dataset: Any) -> int:
    """A 2-D PCA map of the stored face embeddings in the App's Embeddings panel; no re-embedding."""
    import fiftyone.brain as fob

    model_key = plot_model(con)
    if model_key is None:
        return 0
    face_ids = dataset.values("face_id")
    found, vectors = read_vectors(workspace, con, model_key, face_ids)
    if PLOT_KEY in dataset.list_brain_runs():
        dataset.delete_brain_run(PLOT_KEY)
    have = [f for f, ok in zip(face_ids, found, strict=True) if ok]
    if len(have) < 3:
        return 0
    view = dataset.select_by("face_id", have, ordered=True)
    fob.compute_visualization(view, embeddings=np.ascontiguousarray(vectors[found]), method="pca",
                              brain_key=PLOT_KEY, progress=False)
    return len(have)


def record_dataset(con: duckdb.DuckDBPyConnection, name: str, database: str, where: str | None,
                   score_run: str | None, n_samples: int, run_id: str,
                   registration: str | None = None) -> None:
    """Remember a synced dataset (erasures reach into it later; `registration`: the labeled-set
    registration it shows, whose removal deletes it)."""
    with transaction(con):
        con.execute("INSERT OR REPLACE INTO browse_datasets (name, database, where_sql, score_run, "
                    "n_samples, synced_at, run_id, registration) VALUES (?, ?, ?, ?, ?, now(), ?, ?)",
                    [name, database, where, score_run, n_samples, run_id, registration])


@dataclass
class SyncResult(Result):
    """`wb browse`: the dataset's size and what this sync changed in it."""

    dataset: str
    samples: int
    added: int
    deleted: int
    updated_fields: dict[str, int]
    reviews_pulled: int
    reviews_removed: int
    score_run: str | None
    saved_views: list[str]
    plotted: int
    run_id: str


def run_browse_sync(workspace: Workspace, *, dataset_name: str | None = None, where: str | None = None,
                    score_run: str | None = None, plot: bool = True,
                    progress: Callable[[int, int], None] | None = None) -> SyncResult:
    """`wb browse`: mirror the workspace's faces (or those `where` selects) into a FiftyOne dataset.

    Reviewers' tags are pulled first, so a sync never loses a review; only changed samples and
    fields are written. Returns `SyncResult`; raises `WorkbenchError` for a bad `where` or a
    dataset that mirrors another workspace."""
    fo = load_fiftyone()
    name = dataset_name or default_dataset_name(workspace)
    params = {"dataset": name, "where": where, "score_run": score_run, "plot": plot}
    with open_run(workspace, "browse", params) as (con, run):
        dataset = open_dataset(fo, name, workspace)
        pulled = pull_reviews(con, dataset, run.run_id)
        score_run = score_run or latest_score_run(con)
        facts = Facts.of(face_facts(con, where=where, score_run=score_run))
        existing_ids, existing_faces = dataset.values(["id", "face_id"])
        gone = [s for s, f in zip(existing_ids, existing_faces, strict=True) if f not in facts.position]
        if gone:
            dataset.delete_samples(gone)
        present = set(existing_faces)
        new = [i for i, f in enumerate(facts.columns["face_id"]) if f not in present]
        writer = RawWriter(fo, dataset, facts)
        changed = writer.update_changed()
        writer.add_new(new, tags_of(con), progress)
        dataset.reload()
        views = save_views(fo, dataset)
        plotted = embeddings_plot(workspace, con, dataset) if plot else 0
        record_dataset(con, name, database_label(), where, score_run, len(dataset), run.run_id)
        result = SyncResult(dataset=name, samples=len(dataset), added=len(new), deleted=len(gone),
                            updated_fields=changed, reviews_pulled=pulled.added,
                            reviews_removed=pulled.removed,
                            score_run=score_run, saved_views=views, plotted=plotted, run_id=run.run_id)
        run.counts = result.as_dict()
        return result


def run_review_pull(workspace: Workspace, *, dataset_name: str | None = None) -> ReviewPull:
    """`wb review pull`: copy the App's review tags into the manifest (`manifest/reviews.py`).

    Returns `ReviewPull` (tags added and removed, counts by tag); raises `WorkbenchError` when the
    dataset does not exist."""
    fo = load_fiftyone()
    name = dataset_name or default_dataset_name(workspace)
    with open_run(workspace, "review pull", {"dataset": name}) as (con, run):
        if not fo.dataset_exists(name):
            raise WorkbenchError(f"no FiftyOne dataset {name!r}: run `wb browse` first")
        result = pull_reviews(con, open_dataset(fo, name, workspace), run.run_id)
        run.counts = result.as_dict()
        return result


def delete_datasets(names: list[str]) -> list[str]:
    """Delete these App datasets (of a labeled registration that is gone); the names deleted."""
    if not names:
        return []
    fo = load_fiftyone()
    gone = [name for name in names if fo.dataset_exists(name)]
    for name in gone:
        fo.delete_dataset(name)
    return gone


def forget_samples(con: duckdb.DuckDBPyConnection, face_ids: list[str]) -> int:
    """Delete erased faces from every FiftyOne dataset this workspace synced; samples deleted."""
    names = [r[0] for r in con.execute("SELECT name FROM browse_datasets").fetchall()]
    if not names or not face_ids:
        return 0
    fo = load_fiftyone()
    deleted = 0
    for name in names:
        if fo.dataset_exists(name):
            dataset = fo.load_dataset(name)
            view = dataset.select_by("face_id", face_ids)
            deleted += len(view)
            dataset.delete_samples(view)
    return deleted
