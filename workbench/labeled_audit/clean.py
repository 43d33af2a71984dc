"""`wb labeled clean`: a cleaned copy of an audited labeled set, registered beside the source.

The source set is never touched. What is dropped or merged comes from the
newest audit's findings (of the chosen kinds) and from reviewers' tags on the
set's faces: `keep` protects a face from any drop, `wrong_label` drops it,
`same_person` merges its label with the labels an audit found to be the same
person. The copy holds the aligned crops (InsightFace RecordIO by default),
`labels.csv` (old label -> new label) and `dropped.csv` beside them, and its
lineage (source, model, audit run, kinds, reviews) is stored with its
registration, so `wb card` and the manifest can tell where it came from.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from workbench.curate.dedupe import group_labels
from workbench.errors import WorkbenchError
from workbench.formats.recordio import write_insightface_rec
from workbench.labeled.access import LabeledSet
from workbench.labeled.register import register_labeled
from workbench.labeled.registry import Registration
from workbench.labeled_audit.evidence import Members
from workbench.labeled_audit.findings import audited_model, read_findings
from workbench.manifest import reviews
from workbench.manifest.runs import open_run
from workbench.manifest.workspace import Workspace
from workbench.results import Result

FORMATS = ("rec", "folder", "hf")
DROPPABLE = ("wrong_label", "duplicate", "leakage", "mixed_identity")
MERGEABLE = ("same_person",)
PARQUET_ROWS = 1024


@dataclass
class CleanResult(Result):
    """`wb labeled clean`: what the cleaned copy holds, what was dropped and merged, and where."""

    source: str
    name: str
    out: str
    format: str
    faces_in: int
    faces_out: int
    identities_in: int
    identities_out: int
    dropped: dict[str, int]
    merged_pairs: int
    kept_by_review: int
    dropped_by_review: int
    model_key: str
    audit_run: str
    run_id: str


@dataclass(frozen=True)
class Plan:
    """Per usable sample: its new label (-1: dropped) and why it was dropped."""

    new_label: np.ndarray
    reasons: dict[int, list[str]]  # position -> kinds
    new_identities: list[str]
    merged_pairs: int
    kept_by_review: int
    dropped_by_review: int


def parse_kinds(text: str | list[str], allowed: tuple[str, ...], option: str) -> list[str]:
    kinds = [k.strip() for k in (text.split(",") if isinstance(text, str) else text) if k.strip()]
    unknown = sorted(set(kinds) - set(allowed))
    if unknown:
        raise WorkbenchError(f"{option}: unknown kind {', '.join(unknown)} "
                             f"(choose from {', '.join(allowed)})")
    return kinds


def reviewed(con: duckdb.DuckDBPyConnection, registration: Registration) -> dict[int, set[str]]:
    """Reviewers' tags on the set's faces, by sample_idx."""
    return {registration.sample_of(item): tags
            for item, tags in reviews.tags_with_prefix(con, registration.item_prefix).items()}


def plan_clean(labels: np.ndarray, sample_idx: np.ndarray, identities: list[str],
               findings: list[dict[str, Any]], tags: dict[int, set[str]], drop: list[str],
               merge: list[str]) -> Plan:
    """Which samples to keep and under which new label (a pure function of findings and tags;
    `sample_idx` ascending, as `LabeledSet` gives it)."""

    def position(idx: int) -> int | None:
        p = int(np.searchsorted(sample_idx, idx))
        return p if p < len(sample_idx) and sample_idx[p] == idx else None

    n_ids = len(identities)
    members = Members.of(labels, n_ids)
    reasons: dict[int, list[str]] = defaultdict(list)
    for f in findings:
        if f["kind"] not in drop:
            continue
        if f["sample_idx"] is not None:
            p = position(f["sample_idx"])
            if p is not None:
                reasons[p].append(f["kind"])
        else:
            for p in members.positions(f["label"]).tolist():
                reasons[p].append(f["kind"])
    kept_by_review = dropped_by_review = 0
    for idx, marks in tags.items():
        p = position(idx)
        if p is None:
            continue
        if reviews.KEEP in marks and p in reasons:
            del reasons[p]
            kept_by_review += 1
        elif reviews.WRONG_LABEL in marks and reviews.KEEP not in marks and p not in reasons:
            reasons[p].append("wrong_label (review)")
            dropped_by_review += 1
    confirmed = {int(labels[p]) for i, marks in tags.items()
                 if reviews.SAME_PERSON in marks and (p := position(i)) is not None}
    pairs = [(f["label"], f["other_label"]) for f in findings if f["kind"] == "same_person"
             and ("same_person" in merge or f["label"] in confirmed or f["other_label"] in confirmed)]
    a = np.array([p[0] for p in pairs], np.int64)
    b = np.array([p[1] for p in pairs], np.int64)
    group = group_labels(n_ids, a, b)
    n_groups = int(group.max()) + 1 if n_ids else 0
    kept = np.ones(len(labels), bool)
    kept[list(reasons)] = False
    first_label = np.full(n_groups, n_ids, np.int64)  # a group is named after its first label
    np.minimum.at(first_label, group, np.arange(n_ids))
    alive = np.unique(group[labels[kept]])
    alive = alive[np.argsort(first_label[alive], kind="stable")]
    new_of_group = np.full(n_groups, -1, np.int64)
    new_of_group[alive] = np.arange(len(alive))
    new_label = np.where(kept, new_of_group[group[labels]], -1)
    names = [identities[int(first_label[g])] for g in alive]
    return Plan(new_label, dict(reasons), names, len(pairs), kept_by_review, dropped_by_review)


def _folder_name(identity: str, label: int) -> str:
    safe = re.sub(r"[^\w.+-]", "_", identity).strip(".") or "identity"
    return f"{label:06d}_{safe}"


def write_copy(labeled: LabeledSet, plan: Plan, out: Path, fmt: str) -> None:
    """The kept crops grouped by new label, in `fmt`."""
    sample_idx = labeled.samples.column("sample_idx").to_numpy()
    keep = np.flatnonzero(plan.new_label >= 0)
    order = keep[np.lexsort((sample_idx[keep], plan.new_label[keep]))]
    if fmt == "rec":
        write_insightface_rec(out / "train.rec", ((int(plan.new_label[p]), labeled.crop_bytes(int(p)))
                                                  for p in order), num_classes=len(plan.new_identities))
    elif fmt == "folder":
        for p in order:
            label = int(plan.new_label[p])
            folder = out / _folder_name(plan.new_identities[label], label)
            folder.mkdir(exist_ok=True)
            (folder / f"{int(sample_idx[p])}.jpg").write_bytes(labeled.crop_bytes(int(p)))
    else:
        _write_parquet(labeled, plan, order, out / "train.parquet")


def _write_parquet(labeled: LabeledSet, plan: Plan, order: np.ndarray, path: Path) -> None:
    """A Hugging Face parquet file (features in its schema metadata), written in row groups."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = datasets.Features({"image": datasets.Image(),
                                "label": datasets.ClassLabel(names=plan.new_identities),
                                "sample_idx": datasets.Value("int64")}).arrow_schema
    sample_idx = labeled.samples.column("sample_idx").to_numpy()
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(order), PARQUET_ROWS):
            part = order[start : start + PARQUET_ROWS]
            writer.write_table(pa.table({
                "image": [{"bytes": labeled.crop_bytes(int(p)), "path": f"{int(sample_idx[p])}.jpg"}
                          for p in part],
                "label": plan.new_label[part], "sample_idx": sample_idx[part]}, schema=schema))


def write_mapping(labeled: LabeledSet, plan: Plan, out: Path) -> None:
    labels, sample_idx = labeled.labels, labeled.samples.column("sample_idx").to_numpy()
    n_ids = len(labeled.identities)
    kept = plan.new_label >= 0
    n_kept = np.bincount(labels[kept], minlength=n_ids)
    n_dropped = np.bincount(labels[~kept], minlength=n_ids)
    new_of_old = np.full(n_ids, -1, np.int64)
    new_of_old[labels[kept]] = plan.new_label[kept]
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["old_label", "old_identity", "new_label", "new_identity", "kept", "dropped"])
        for old, identity in enumerate(labeled.identities):
            new = int(new_of_old[old])
            writer.writerow([old, identity, new if new >= 0 else "",
                             plan.new_identities[new] if new >= 0 else "", int(n_kept[old]),
                             int(n_dropped[old])])
    locators = labeled.samples.column("locator")
    with open(out / "dropped.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_idx", "locator", "old_label", "reasons"])
        for p in sorted(plan.reasons):
            writer.writerow([int(sample_idx[p]), locators[p].as_py(), int(labels[p]),
                             ";".join(plan.reasons[p])])


def run_clean(workspace: Workspace, name: str, out: Path, *, fmt: str = "rec",
              drop: str | list[str] = "wrong_label,duplicate,leakage", merge: str | list[str] = "",
              new_name: str | None = None, model_key: str | None = None) -> CleanResult:
    """`wb labeled clean`: write a cleaned copy of an audited set and register it with its lineage.

    Args: `out` an empty or new folder; `fmt` rec | folder | hf; `drop` and `merge` the finding
    kinds acted on; `new_name` (default `NAME-clean`); `model_key` the audit to use.
    Returns: `CleanResult`. The source is never touched; `wb forget` follows the lineage into
    the copy (`governance/lineage.py`)."""
    if fmt not in FORMATS:
        raise WorkbenchError(f"--format must be one of {', '.join(FORMATS)}")
    drops, merges = parse_kinds(drop, DROPPABLE, "--drop"), parse_kinds(merge, MERGEABLE, "--merge")
    out = out.expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise WorkbenchError(f"{out} exists and is not an empty folder; choose a new folder")
    new_name = new_name or f"{name}-clean"
    params = {"labeled": name, "out": str(out), "format": fmt, "drop": drops, "merge": merges,
              "name": new_name, "model_key": model_key}
    with open_run(workspace, "labeled clean", params) as (con, run):
        if con.execute("SELECT 1 FROM labeled_sets WHERE name = ?", [new_name]).fetchall():
            raise WorkbenchError(f"labeled set {new_name!r} already exists; choose another --name")
        model_key, audit_run = audited_model(con, name, model_key)
        findings = read_findings(con, name, model_key).to_pylist()
        with LabeledSet(workspace, con, name) as labeled:
            tags = reviewed(con, labeled.registration)
            plan = plan_clean(labeled.labels, labeled.samples.column("sample_idx").to_numpy(),
                              labeled.identities, findings, tags, drops, merges)
            if not (plan.new_label >= 0).any():
                raise WorkbenchError(f"cleaning {name} would drop every face; nothing written")
            out.mkdir(parents=True, exist_ok=True)
            write_copy(labeled, plan, out, fmt)
            write_mapping(labeled, plan, out)
        dropped: dict[str, int] = defaultdict(int)
        for kinds in plan.reasons.values():
            dropped[kinds[0]] += 1
        lineage = {"cleaned_from": name, "model_key": model_key, "audit_run": audit_run,
                   "drop": drops, "merge": merges, "dropped": dict(dropped),
                   "merged_pairs": plan.merged_pairs, "kept_by_review": plan.kept_by_review,
                   "dropped_by_review": plan.dropped_by_review, "clean_run": run.run_id}
        (out / "lineage.json").write_text(json.dumps(lineage, indent=1))
        result = CleanResult(
            source=name, name=new_name, out=str(out), format=fmt, faces_in=len(plan.new_label),
            faces_out=int((plan.new_label >= 0).sum()), identities_in=len(np.unique(labeled.labels)),
            identities_out=len(plan.new_identities), dropped=dict(dropped),
            merged_pairs=plan.merged_pairs, kept_by_review=plan.kept_by_review,
            dropped_by_review=plan.dropped_by_review, model_key=model_key, audit_run=audit_run,
            run_id=run.run_id)
        run.counts = result.as_dict()
    register_labeled(workspace, new_name, out, fmt=fmt, aligned=True, lineage=lineage)
    return result
