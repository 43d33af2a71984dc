"""`wb browse --labeled NAME`: a labeled set's audit findings in the FiftyOne App.

One dataset per labeled set. It holds the faces with findings and, for
context, up to `CONTEXT` other faces of every identity involved (`--all`:
every face). Each sample's `face_id` is the face's labeled item id, so
reviewers' tags (`keep`, `wrong_label`, `same_person`) come back through the
same `reviews` table as the unlabeled ones and steer `wb labeled clean`.
Crops of sets stored without crop files (RecordIO, HF, aligned folders) are
written once to the workspace cache for the App to show.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench.browse.app import database_label, load_fiftyone
from workbench.browse.reviews import pull_reviews
from workbench.browse.sync import open_dataset, record_dataset
from workbench.labeled import registry
from workbench.labeled.access import LabeledSet
from workbench.labeled.registry import Registration, crop_cache
from workbench.labeled_audit.evidence import Members
from workbench.labeled_audit.findings import audited_model, read_findings
from workbench.manifest.reviews import tags_of
from workbench.manifest.runs import open_run
from workbench.manifest.workspace import Workspace
from workbench.results import Result

CONTEXT = 6  # other faces shown of each identity with a finding
BATCH = 1000


def labeled_dataset_name(workspace: Workspace, registration: Registration) -> str:
    """One App dataset per registration: a set registered again under its name gets a new one."""
    digest = hashlib.sha1(str(workspace.root).encode()).hexdigest()[:6]
    return f"wb-{workspace.root.name}-{digest}-labeled-{registration.name}-{registration.id[:8]}"


@dataclass
class LabeledSyncResult(Result):
    """`wb browse --labeled`: the dataset, its size, what this sync changed, the audit shown."""

    dataset: str
    labeled_set: str
    samples: int
    added: int
    deleted: int
    reviews_pulled: int
    model_key: str
    saved_views: list[str]
    run_id: str


def run_labeled_sync(workspace: Workspace, set_name: str, *, dataset_name: str | None = None,
                     everything: bool = False, model_key: str | None = None,
                     progress: Callable[[int, int], None] | None = None) -> LabeledSyncResult:
    """`wb browse --labeled NAME`: mirror a labeled set's newest audit findings into its App dataset.

    Args: `set_name` the registered set; `dataset_name` overrides the dataset (default: one per
    registration); `everything` shows every face, not only those with findings and their context;
    `model_key` picks the audit of that model (default: the newest).
    Returns: `LabeledSyncResult` (dataset, samples, what changed, reviews pulled, saved views).
    Raises: `WorkbenchError` when the set is not registered or not audited, or FiftyOne cannot run."""
    fo = load_fiftyone()
    with workspace.connect(read_only=True) as con:
        registration = registry.get(con, set_name)
    name = dataset_name or labeled_dataset_name(workspace, registration)
    params = {"labeled": set_name, "dataset": name, "all": everything, "model_key": model_key}
    with open_run(workspace, "browse labeled", params) as (con, run):
        model_key, _ = audited_model(con, set_name, model_key)
        findings = read_findings(con, set_name, model_key).to_pylist()
        dataset = open_dataset(fo, name, workspace, schema=_schema(fo))
        pulled = pull_reviews(con, dataset, run.run_id)
        with LabeledSet(workspace, con, set_name) as labeled:
            samples = _samples(workspace, labeled, findings, everything, tags_of(con))
        existing = dict(zip(*dataset.values(["face_id", "id"]), strict=True))
        wanted = {s["face_id"] for s in samples}
        gone = [sid for face, sid in existing.items() if face not in wanted]
        if gone:
            dataset.delete_samples(gone)
        new = [s for s in samples if s["face_id"] not in existing]
        for start in range(0, len(new), BATCH):
            dataset.add_samples([_sample(fo, s) for s in new[start : start + BATCH]], progress=False)
            if progress:
                progress(min(start + BATCH, len(new)), len(new))
        kept = [s for s in samples if s["face_id"] in existing]
        for field in FIELDS[1:]:
            if kept:
                dataset.set_values(field, {s["face_id"]: s.get(field) for s in kept}, key_field="face_id")
        dataset.reload()
        views = _save_views(fo, dataset)
        record_dataset(con, name, database_label(), None, None, len(dataset), run.run_id,
                       registration=labeled.registration.id)
        result = LabeledSyncResult(dataset=name, labeled_set=set_name, samples=len(dataset),
                                   added=len(new), deleted=len(gone), reviews_pulled=pulled.added,
                                   model_key=model_key, saved_views=views, run_id=run.run_id)
        run.counts = result.as_dict()
        return result


FIELDS = ("identity", "findings", "wrong_label_score", "likely_identity", "same_person_as",
          "second_person", "leaked_from", "duplicate_of")


def _samples(workspace: Workspace, labeled: LabeledSet, findings: list[dict[str, Any]], everything: bool,
             tags: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The faces to show, with their fields."""
    sample_idx = labeled.samples.column("sample_idx").to_numpy()
    labels, names = labeled.labels, labeled.identities
    members = Members.of(labels, len(names))
    per_face: dict[int, dict[str, Any]] = defaultdict(lambda: {"findings": []})
    involved: set[int] = set()
    for f in findings:
        involved.add(f["label"])
        p = int(np.searchsorted(sample_idx, f["sample_idx"])) if f["sample_idx"] is not None else -1
        if 0 <= p < len(sample_idx) and sample_idx[p] == f["sample_idx"]:
            entry = per_face[p]
            entry["findings"].append(f["kind"])
            if f["kind"] == "wrong_label":
                entry["wrong_label_score"] = f["score"]
                if f["other_label"] is not None:
                    entry["likely_identity"] = names[f["other_label"]]
            elif f["kind"] == "duplicate":
                entry["duplicate_of"] = f["other_sample_idx"]
            continue
        if f["sample_idx"] is not None:
            continue  # a face no longer in the set
        own = members.positions(f["label"]).tolist()
        if f["kind"] == "same_person":
            involved.add(f["other_label"])
            for label, other in ((f["label"], f["other_label"]), (f["other_label"], f["label"])):
                for p in members.positions(label)[:CONTEXT].tolist():
                    per_face[p]["findings"].append("same_person")
                    per_face[p]["same_person_as"] = names[other]
        elif f["kind"] == "mixed_identity":
            second = set(json.loads(f["evidence"])["second_person"])
            for p in own:
                per_face[p]["findings"].append("mixed_identity")
                per_face[p]["second_person"] = p in second
        elif f["kind"] == "leakage":
            for p in own[:CONTEXT]:
                per_face[p]["findings"].append("leakage")
                per_face[p]["leaked_from"] = f["other_name"]
    chosen = set(range(len(labels))) if everything else set(per_face)
    if not everything:
        for label in involved:
            chosen.update(members.positions(label)[:CONTEXT].tolist())
    out = []
    for p in sorted(chosen):
        face_id = labeled.registration.item_id(int(sample_idx[p]))
        entry = per_face.get(p, {"findings": []})
        out.append({"face_id": face_id, "filepath": _crop_path(workspace, labeled, p),
                    "identity": names[labels[p]], "sample_idx": int(sample_idx[p]),
                    "findings": sorted(set(entry["findings"])),
                    "tags": tags.get(face_id, []),
                    **{k: v for k, v in entry.items() if k != "findings"}})
    return out


def _crop_path(workspace: Workspace, labeled: LabeledSet, position: int) -> str:
    crop_rel = labeled.samples.column("crop_rel")[position].as_py()
    if crop_rel is not None:
        return str(workspace.root / crop_rel)
    idx = int(labeled.samples.column("sample_idx")[position].as_py())
    path = crop_cache(workspace, labeled.registration) / f"{idx}.jpg"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(labeled.crop_bytes(position))
    return str(path)


def _schema(fo: Any) -> dict[str, tuple[Any, dict[str, Any]]]:
    text, number = (fo.StringField, {}), (fo.FloatField, {})
    return {"face_id": text, "sample_idx": (fo.IntField, {}),
            "identity": (fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Classification}),
            "findings": (fo.ListField, {"subfield": fo.StringField}), "wrong_label_score": number,
            "likely_identity": text, "same_person_as": text, "second_person": (fo.BooleanField, {}),
            "leaked_from": text, "duplicate_of": (fo.IntField, {})}


def _sample(fo: Any, s: dict[str, Any]) -> Any:
    sample = fo.Sample(filepath=s["filepath"], tags=list(s["tags"]), face_id=s["face_id"],
                       sample_idx=s["sample_idx"], identity=fo.Classification(label=s["identity"]),
                       findings=s["findings"])
    for field in FIELDS[2:]:
        if s.get(field) is not None:
            sample[field] = s[field]
    return sample


def _save_views(fo: Any, dataset: Any) -> list[str]:
    F = fo.ViewField
    views = {
        "wrong-labels": dataset.match(F("findings").contains("wrong_label")).sort_by("wrong_label_score"),
        "same-person-pairs": dataset.match(F("findings").contains("same_person"))
        .sort_by(F("identity.label")),
        "mixed-identities": dataset.match(F("findings").contains("mixed_identity"))
        .sort_by(F("identity.label")),
        "leakage": dataset.match(F("findings").contains("leakage")).sort_by(F("identity.label")),
        "duplicates": dataset.match(F("findings").contains("duplicate")),
    }
    for name, view in views.items():
        dataset.save_view(name, view, overwrite=True)
    return sorted(views)
