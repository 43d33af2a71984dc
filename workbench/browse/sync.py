"""`wb browse`: mirror the manifest into a FiftyOne dataset, one sample per face crop.

The dataset mirrors a selection of faces (all, or `--where`): a sync first
pulls reviewers' tags into the manifest, then adds new faces, updates only the
values that changed (bulk writes), and deletes samples whose
faces left the selection or were erased. Samples keep their ids and tags, so
a re-sync never duplicates anything and never loses a review.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from bson import ObjectId
from pymongo import UpdateOne

from workbench.browse.app import database_label, load_fiftyone
from workbench.browse.reviews import pull_reviews, review_tags
from workbench.browse.selection import face_facts, latest_score_run
from workbench.embed.store import UNLABELED_ITEMS_SQL, read_vectors
from workbench.errors import WorkbenchError
from workbench.faces.quality import MIN_QUALITY
from workbench.manifest.query import one, transaction
from workbench.manifest.runs import open_run
from workbench.manifest.workspace import Workspace

PLOT_KEY = "face_embeddings"
BATCH = 5_000

# sample field -> manifest column, for plain values
PLAIN = {
    "face_id": "face_id", "image_id": "image_id", "source": "source", "original_path": "original_path",
    "is_primary": "is_primary", "quality": "quality", "face_box": "face_box",
    "face_landmarks": "face_landmarks", "split": "split", "exclusion_reason": "exclusion_reason",
    "dup_group": "dup_group", "dup_representative": "dup_representative",
    "dup_group_size": "dup_group_size", "overlap_set": "overlap_set", "overlap_score": "overlap_score",
    "overlap_decision": "overlap_decision", "max_prob": "max_prob", "entropy": "entropy",
}
# sample field -> (label column, confidence column), shown as Classifications in the App
LABELS = {
    "overlap": ("overlap_identity", "overlap_similarity"),
    "predicted": ("pred_identity", "max_prob"),
}


@dataclass
class Facts:
    """The selection as Python columns, with each face's position."""

    columns: dict[str, list[Any]]
    position: dict[str, int]

    @classmethod
    def of(cls, table: pa.Table) -> Facts:
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
        return cls(columns, {f: i for i, f in enumerate(columns["face_id"])})


def default_dataset_name(workspace: Workspace) -> str:
    digest = hashlib.sha1(str(workspace.root).encode()).hexdigest()[:6]
    return f"wb-{workspace.root.name}-{digest}"


def _schema(fo: Any) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Field types declared up front, so fields exist before any face has a value for them."""
    text, number = (fo.StringField, {}), (fo.FloatField, {})
    points = (fo.ListField, {"subfield": fo.FloatField})
    schema = {name: text for name in ("face_id", "image_id", "source", "original_path", "split",
                                      "exclusion_reason", "dup_group", "overlap_set", "overlap_decision")}
    schema |= {name: number for name in ("quality", "overlap_score", "max_prob", "entropy")}
    schema |= {"is_primary": (fo.BooleanField, {}), "dup_representative": (fo.BooleanField, {}),
               "dup_group_size": (fo.IntField, {}), "face_box": points, "face_landmarks": points}
    schema |= {name: (fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Classification})
               for name in LABELS}
    return schema


def open_dataset(fo: Any, name: str, workspace: Workspace) -> Any:
    """The persistent dataset `name`, refusing one that mirrors another workspace."""
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
    for field, (ftype, kwargs) in _schema(fo).items():
        if field not in present:
            dataset.add_sample_field(field, ftype, **kwargs)
    dataset.create_index("face_id", unique=True)
    return dataset


def _batches(items: list[Any], size: int = BATCH) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Documents:
    """Sample documents in FiftyOne's layout, from templates FiftyOne itself makes.

    FiftyOne's `add_samples` rebuilds an ODM document for every sample after
    inserting it, and `set_values` writes one field at a time (about 1.3 ms a
    face to add: 130 s for 100k faces), so the sync writes documents with the
    driver, shaped by one sample and one Classification that FiftyOne built.
    The tests read everything back through FiftyOne's API.
    """

    def __init__(self, fo: Any, dataset: Any, facts: Facts) -> None:
        self.facts, self.collection = facts, dataset._sample_collection
        base = dataset._make_dict(fo.Sample(filepath="/template.jpg"))
        self.base = {k: v for k, v in base.items() if k not in ("filepath", "tags", "_rand")}
        self.label_base = {k: v for k, v in fo.Classification(label="x", confidence=0.0).to_dict().items()
                           if k not in ("_id", "label", "confidence")}

    def label(self, field: str, i: int) -> dict[str, Any] | None:
        label_col, conf_col = LABELS[field]
        label = self.facts.columns[label_col][i]
        if label is None:
            return None
        return {"_id": ObjectId(), **self.label_base, "label": label,
                "confidence": self.facts.columns[conf_col][i]}

    def new(self, i: int, tags: list[str], rand: float, now: datetime) -> dict[str, Any]:
        cols = self.facts.columns
        doc = {**self.base, "filepath": cols["crop_path"][i], "tags": tags, "_rand": rand,
               "created_at": now, "last_modified_at": now}
        doc |= {field: cols[col][i] for field, col in PLAIN.items() if cols[col][i] is not None}
        doc |= {field: label for field in LABELS if (label := self.label(field, i)) is not None}
        return doc

    def changes(self, doc: dict[str, Any], i: int) -> dict[str, Any]:
        """The fields of stored `doc` whose values differ from the manifest's row `i`."""
        cols = self.facts.columns
        sets = {field: cols[col][i] for field, col in PLAIN.items() if doc.get(field) != cols[col][i]}
        for field, (label_col, conf_col) in LABELS.items():
            stored = doc.get(field) or {}
            if (stored.get("label"), stored.get("confidence")) != (cols[label_col][i], cols[conf_col][i]):
                sets[field] = self.label(field, i)
        return sets


def _add_new(docs: Documents, new: list[int], tags: dict[str, list[str]],
             progress: Callable[[int, int], None] | None) -> None:
    face_ids = docs.facts.columns["face_id"]
    rng = np.random.default_rng()
    for done, batch in enumerate(_batches(new), start=1):
        now = datetime.now(UTC).replace(tzinfo=None)
        draws = rng.random(len(batch))
        docs.collection.insert_many([docs.new(i, tags.get(face_ids[i], []), float(r), now)
                                     for i, r in zip(batch, draws, strict=True)], ordered=False)
        if progress:
            progress(min(done * BATCH, len(new)), len(new))


def _update_changed(docs: Documents) -> dict[str, int]:
    """Compare every stored sample with the manifest; write what differs in bulk."""
    projection = {"face_id": True, **dict.fromkeys(PLAIN, True), **dict.fromkeys(LABELS, True)}
    now = datetime.now(UTC).replace(tzinfo=None)
    changed: Counter[str] = Counter()
    ops = []
    for doc in docs.collection.find({}, projection):
        i = docs.facts.position.get(doc.get("face_id"))
        if i is None:
            continue
        sets = docs.changes(doc, i)
        if sets:
            changed.update(sets.keys())
            ops.append(UpdateOne({"_id": doc["_id"]}, {"$set": {**sets, "last_modified_at": now}}))
        if len(ops) >= BATCH:
            docs.collection.bulk_write(ops, ordered=False)
            ops = []
    if ops:
        docs.collection.bulk_write(ops, ordered=False)
    return dict(changed)


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


def run_browse_sync(workspace: Workspace, *, dataset_name: str | None = None, where: str | None = None,
                    score_run: str | None = None, plot: bool = True,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
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
        docs = Documents(fo, dataset, facts)
        changed = _update_changed(docs)
        _add_new(docs, new, review_tags(con), progress)
        dataset.reload()
        views = save_views(fo, dataset)
        plotted = embeddings_plot(workspace, con, dataset) if plot else 0
        with transaction(con):
            con.execute("INSERT OR REPLACE INTO browse_datasets (name, database, where_sql, score_run, "
                        "n_samples, synced_at, run_id) "
                        "VALUES (?, ?, ?, ?, ?, now(), ?)",
                        [name, database_label(), where, score_run, len(dataset), run.run_id])
        summary = {"dataset": name, "samples": len(dataset), "added": len(new), "deleted": len(gone),
                   "updated_fields": changed, "reviews_pulled": pulled["added"],
                   "reviews_removed": pulled["removed"], "score_run": score_run, "saved_views": views,
                   "plotted": plotted, "run_id": run.run_id}
        run.counts = summary
        return summary


def run_review_pull(workspace: Workspace, *, dataset_name: str | None = None) -> dict[str, Any]:
    fo = load_fiftyone()
    name = dataset_name or default_dataset_name(workspace)
    with open_run(workspace, "review pull", {"dataset": name}) as (con, run):
        if not fo.dataset_exists(name):
            raise WorkbenchError(f"no FiftyOne dataset {name!r}: run `wb browse` first")
        summary = pull_reviews(con, open_dataset(fo, name, workspace), run.run_id)
        run.counts = summary
        return summary


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
