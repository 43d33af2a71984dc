"""`wb forget`: erase a person, a source, an image or a URL from the workspace.

Removed: manifest rows (images, locations, faces, duplicates, clusters,
overlap decisions, splits, scores, embedding rows, crawl rows, labeled
samples), crop files, embedding vectors (overwritten with zeros in the
append-only matrices), identity centres built from erased labeled faces,
reports that name erased faces, reviews, and the samples of every FiftyOne
dataset the workspace synced. Exports that contained erased faces are
marked stale and listed. A person forgotten in a labeled set is followed into
its cleaned copies (`lineage.py`): their samples, files and mapping rows go too,
and the erasure record lists each copy. FAISS indexes are never persisted, so there is none
to rebuild. Finally the manifest is rewritten into a fresh file, so deleted
rows cannot be recovered from free pages of the old one (`compaction.py`; with
`--no-compact`, later by `wb compact`, once for many requests). What stays is a
tombstone in `wb_erasures`: the kind of request, when, why, and counts.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from workbench.browse.sync import forget_samples
from workbench.embed.store import EmbeddingStore
from workbench.errors import WorkbenchError
from workbench.governance.compaction import compact_locked, mark_pending
from workbench.governance.lineage import ERASED, CopyErasure, copies_of, erase_copy_files
from workbench.labeled import registry
from workbench.labeled.registry import crop_cache
from workbench.manifest.query import one, registered, transaction
from workbench.manifest.workspace import Workspace
from workbench.results import Result


@dataclass
class Targets:
    image_ids: list[str] = field(default_factory=list)
    face_ids: list[str] = field(default_factory=list)
    samples: list[tuple[str, int]] = field(default_factory=list)  # (set, sample_idx)
    urls: list[str] = field(default_factory=list)
    copies: list[CopyErasure] = field(default_factory=list)  # cleaned copies holding the person
    labels: dict[str, list[int]] = field(default_factory=dict)  # set -> the person's labels there


def find_targets(con: duckdb.DuckDBPyConnection, *, identity: str | None, source: str | None,
                 image: str | None, url: str | None) -> Targets:
    t = Targets()
    if identity:
        for set_name, label in con.execute("SELECT set_name, label FROM labeled_identities "
                                           "WHERE identity = ?", [identity]).fetchall():
            t.labels.setdefault(set_name, []).append(int(label))
        t.copies = copies_of(con, {s: set(labels) for s, labels in t.labels.items()})
        for copy in t.copies:
            t.labels.setdefault(copy.set_name, []).extend(copy.labels)
        t.samples = [(s, int(i)) for s, i in con.execute(
            "SELECT s.set_name, s.sample_idx FROM labeled_samples s JOIN (SELECT unnest(?::VARCHAR[]) AS "
            "set_name, unnest(?::INTEGER[][]) AS labels) w ON s.set_name = w.set_name "
            "AND list_contains(w.labels, s.label) ORDER BY 1, 2",
            [list(t.labels), list(t.labels.values())]).fetchall()]
        t.face_ids = [r[0] for r in con.execute(
            "SELECT face_id FROM wb_overlap WHERE nearest_identity = ? AND decision <> 'clean'",
            [identity]).fetchall()]
        t.image_ids = [r[0] for r in con.execute(
            "SELECT DISTINCT image_id FROM faces WHERE face_id IN (SELECT unnest(?::VARCHAR[]))",
            [t.face_ids]).fetchall()]
    elif source:
        t.image_ids = [r[0] for r in con.execute(
            "SELECT DISTINCT image_id FROM files WHERE source = ? AND image_id IS NOT NULL",
            [source]).fetchall()]
    elif image:
        t.image_ids = [r[0] for r in con.execute("SELECT image_id FROM images WHERE image_id = ?",
                                                 [image.lower()]).fetchall()]
    elif url:
        row = one(con, "SELECT sha256 FROM crawl_urls WHERE url = ? OR final_url = ?", [url, url])
        if row is None:
            raise WorkbenchError(f"no crawled URL {url!r} in this workspace")
        if row[0]:
            t.image_ids = [row[0]]
    else:
        raise WorkbenchError("say what to forget: --identity, --source, --image or --url")
    if t.image_ids:
        t.face_ids = sorted(set(t.face_ids) | {r[0] for r in con.execute(
            "SELECT face_id FROM faces WHERE image_id IN (SELECT unnest(?::VARCHAR[]))",
            [t.image_ids]).fetchall()})
        t.urls = [r[0] for r in con.execute(
            "SELECT url FROM crawl_urls WHERE sha256 IN (SELECT unnest(?::VARCHAR[]))",
            [t.image_ids]).fetchall()]
    if url and url not in t.urls:
        t.urls.append(url)
    return t


@dataclass
class ForgetResult(Result):
    """`wb forget`: what was (or, with --dry-run, would be) erased, and exports now stale."""

    run_id: str
    request: str
    images: int
    faces: int
    labeled_samples: int
    urls: int
    crop_files: int
    stale_exports: list[dict[str, str]]
    dry_run: bool
    fiftyone_samples: int = 0
    embedding_rows: int = 0
    reports_removed: int = 0
    cleaned_copies: list[dict[str, Any]] = field(default_factory=list)  # erased there too
    compaction: str = ""  # "done", or pending until `wb compact`


def run_forget(workspace: Workspace, *, identity: str | None = None, source: str | None = None,
               image: str | None = None, url: str | None = None, reason: str | None = None,
               dry_run: bool = False, compact: bool = True) -> ForgetResult:
    """Erase, then (with `compact`) rewrite the manifest into a fresh file, all under the writer
    lock: no writer can start in between, and "erased" is only reported once that is done.

    Without `compact` the rows are gone from every table at once but the file's free pages may
    still hold their bytes until `wb compact` (`compaction.py`) rewrites it: a long list of
    requests then costs one rewrite of the manifest instead of one each (a rewrite grows with the
    manifest: ~1.8 s at 340k faces, tens of seconds at MS1MV2's size)."""
    with workspace.lock("forget"):
        with workspace.connect() as con:
            summary = _erase(workspace, con, identity=identity, source=source, image=image, url=url,
                             reason=reason, dry_run=dry_run)
            if not dry_run:
                mark_pending(con)
        if not dry_run and compact:
            summary.compaction = compact_locked(workspace, summary.run_id)
        elif not dry_run:
            summary.compaction = "pending: run wb compact to rewrite the manifest without the erased rows"
    return summary


def _erase(workspace: Workspace, con: duckdb.DuckDBPyConnection, *, identity: str | None,
           source: str | None, image: str | None, url: str | None, reason: str | None,
           dry_run: bool) -> ForgetResult:
    from workbench.manifest.runs import recorded_run

    request = next(k for k, v in (("identity", identity), ("source", source), ("image", image),
                                  ("url", url), ("none", "x")) if v)
    with recorded_run(con, "forget", {"request": request, "dry_run": dry_run}) as run:
        t = find_targets(con, identity=identity, source=source, image=image, url=url)
        if not (t.image_ids or t.face_ids or t.samples or t.urls):
            raise WorkbenchError(f"nothing in this workspace matches {request} "
                                 f"{identity or source or image or url!r}: nothing erased")
        exports = [r[0] for r in con.execute(
            "SELECT DISTINCT x.export_id FROM export_items x WHERE x.face_id IN "
            "(SELECT unnest(?::VARCHAR[]))", [t.face_ids]).fetchall()]
        stale = con.execute("SELECT export_id, out FROM exports WHERE export_id IN "
                            "(SELECT unnest(?::VARCHAR[]))", [exports]).fetchall()
        crops = [r[0] for r in con.execute("SELECT crop_rel FROM faces WHERE face_id IN "
                                           "(SELECT unnest(?::VARCHAR[]))", [t.face_ids]).fetchall()]
        crops += [r[0] for r in con.execute(
            "SELECT crop_rel FROM labeled_samples WHERE crop_rel IS NOT NULL AND "
            "(set_name, sample_idx) IN (SELECT (s, i) FROM (SELECT unnest(?::VARCHAR[]) s, "
            "unnest(?::BIGINT[]) i))", [[s for s, _ in t.samples], [i for _, i in t.samples]]).fetchall()]
        summary = ForgetResult(
            run_id=run.run_id, request=request, images=len(t.image_ids), faces=len(t.face_ids),
            labeled_samples=len(t.samples), urls=len(t.urls), crop_files=len(crops),
            stale_exports=[{"export_id": e, "out": o} for e, o in stale], dry_run=dry_run,
            cleaned_copies=[{"set": c.set_name, "path": c.path, "samples": len(c.samples)} for c in t.copies])
        if dry_run:
            run.counts = summary.as_dict()
            return summary
        # first, so that an unreachable FiftyOne database stops the erasure before anything changed
        summary.fiftyone_samples = forget_samples(con, t.face_ids)
        regs = {name: registry.get(con, name) for name in {s for s, _ in t.samples}}
        item_ids = t.face_ids + [regs[s].item_id(i) for s, i in t.samples]
        summary.embedding_rows = EmbeddingStore.zero(workspace, con, item_ids)
        sample_sets = sorted({s for s, _ in t.samples})
        gone = {"gone_faces": t.face_ids, "gone_images": t.image_ids, "gone_items": item_ids,
                "gone_urls": t.urls}
        gone_samples = pa.table({"set_name": pa.array([s for s, _ in t.samples], pa.string()),
                                 "sample_idx": pa.array([i for _, i in t.samples], pa.int64())})
        with registered(con, gone_samples=gone_samples,
                        **{k: pa.table({"id": pa.array(v, pa.string())}) for k, v in gone.items()}), \
                transaction(con):
            for table in ("faces", "dups", "clusters", "overlap", "scores", "export_items", "reviews"):
                con.execute(f"DELETE FROM {table} WHERE face_id IN (SELECT id FROM gone_faces)")
            con.execute("DELETE FROM splits WHERE image_id IN (SELECT id FROM gone_images) "
                        "OR face_id IN (SELECT id FROM gone_faces)")
            for table in ("images", "files"):
                con.execute(f"DELETE FROM {table} WHERE image_id IN (SELECT id FROM gone_images)")
            con.execute("DELETE FROM embeddings WHERE item_id IN (SELECT id FROM gone_items)")
            con.execute("DELETE FROM crawl_urls WHERE url IN (SELECT id FROM gone_urls)")
            con.execute("DELETE FROM labeled_samples WHERE (set_name, sample_idx) IN "
                        "(SELECT (set_name, sample_idx) FROM gone_samples)")
            con.execute("DELETE FROM labeled_findings WHERE (set_name, sample_idx) IN "
                        "(SELECT (set_name, sample_idx) FROM gone_samples) OR (set_name, other_sample_idx) "
                        "IN (SELECT (set_name, sample_idx) FROM gone_samples)")
            for set_name, labels in t.labels.items():
                con.execute("UPDATE labeled_identities SET identity = ?, n_images = 0 WHERE set_name = ? "
                            "AND label IN (SELECT unnest(?::INTEGER[]))", [ERASED, set_name, labels])
            if sample_sets:
                registrations = [regs[s].id for s in sample_sets]
                centre_paths = con.execute("SELECT path FROM centres WHERE registration IN "
                                           "(SELECT unnest(?::VARCHAR[]))", [registrations]).fetchall()
                for (path,) in centre_paths:
                    Path(path).unlink(missing_ok=True)
                con.execute("DELETE FROM centres WHERE registration IN (SELECT unnest(?::VARCHAR[]))",
                            [registrations])
            con.execute("UPDATE exports SET stale = true WHERE export_id IN "
                        "(SELECT unnest(?::VARCHAR[]))", [exports])
            con.execute("INSERT INTO erasures (erasure_id, requested_at, request, reason, images, faces, "
                        "labeled_samples, urls, stale_exports, derived) "
                        "VALUES (?, now(), ?, ?, ?, ?, ?, ?, ?, ?)",
                        [f"erasure-{uuid.uuid4().hex[:10]}", request, reason, len(t.image_ids),
                         len(t.face_ids), len(t.samples), len(t.urls), len(exports),
                         json.dumps(summary.cleaned_copies)])
        for rel in crops:
            (workspace.root / rel).unlink(missing_ok=True)
        for reg in regs.values():
            shutil.rmtree(crop_cache(workspace, reg), ignore_errors=True)  # the App's copies of crops
            if reg.format == "hf":
                shutil.rmtree(workspace.root / "cache" / "hf", ignore_errors=True)  # decoded copies
        for copy in t.copies:
            erase_copy_files(copy)
        summary.reports_removed = _drop_reports(workspace, t.face_ids)
        run.counts = {k: v for k, v in summary.as_dict().items() if k != "stale_exports"}
    return summary


def _drop_reports(workspace: Workspace, face_ids: list[str]) -> int:
    """Remove report files that name an erased face (they are regenerated by the next run)."""
    reports = workspace.root / "reports"
    if not reports.exists() or not face_ids:
        return 0
    wanted = set(face_ids)
    removed = 0
    for path in reports.rglob("*.json"):
        text = path.read_text(errors="ignore")
        if any(f in text for f in wanted):
            path.unlink()
            removed += 1
    return removed
