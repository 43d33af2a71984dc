"""The ingest loop: walk in chunks, skip what the manifest has, process in parallel, commit.

Each chunk is committed in one transaction after its crops are on disk, so a
crash loses at most the chunk in flight, and a re-run redoes exactly that.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import duckdb
import pyarrow as pa

from workbench.cluster import nodes_used, work_mapper
from workbench.errors import WorkbenchError
from workbench.faces.detectors import DetectorSpec
from workbench.formats.files import display_path
from workbench.formats.walk import FileEntry, WalkStats, is_uri, walk_images, walk_uri
from workbench.ingest.worker import TMP_DIR, FileResult, IngestOptions, process_file
from workbench.manifest.detector import BEFORE_KEYS
from workbench.manifest.detector import choose as choose_detector
from workbench.manifest.detector import record as record_detector
from workbench.manifest.query import registered, transaction
from workbench.manifest.runs import open_run
from workbench.manifest.workspace import Workspace
from workbench.parallel import chunked
from workbench.results import Result

ProgressFn = Callable[[int, int], None]


@dataclass
class IngestSummary(Result):
    source: str
    files_seen: int = 0
    already_ingested: int = 0
    processed: int = 0
    decoded: int = 0
    new_images: int = 0
    exact_duplicates: int = 0
    faces: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    skipped_other: int = 0
    odd_names: int = 0  # file names that are not valid UTF-8, stored with \x.. escapes
    run_id: str | None = None
    hints: list[str] = field(default_factory=list)
    ray_nodes: dict[str, int] = field(default_factory=dict)  # shards run per Ray node

    def require_images(self, path: Path | str) -> None:
        """A path with no image files, or none readable, is a mistake worth one clear line (what
        was processed is recorded first)."""
        if self.files_seen == 0:
            raise WorkbenchError(f"no image files under {path}")
        if self.processed > 0 and self.decoded == 0:
            reasons = ", ".join(f"{n} {r}" for r, n in self.rejected.most_common(3))
            raise WorkbenchError(f"nothing could be read under {path} ({reasons})")

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["rejected"] = dict(self.rejected.most_common())
        return data


def run_ingest(
    workspace: Workspace,
    path: str | os.PathLike[str],
    *,
    source: str | None = None,
    aligned: bool = False,
    workers: int | None = None,
    detector: str | None = None,
    det_threshold: float | None = None,
    upsample: int = 0,
    chunk_size: int = 512,
    progress: ProgressFn | None = None,
    ray: str | None = None,
) -> IngestSummary:
    """Ingest every image under `path` into the workspace; safe to re-run and to kill.

    `path` is a local path or a filesystem URI pyarrow can read (`file://`, `s3://`, `gs://`,
    `hdfs://`, ...), recorded as given. `ray`: run the per-file work as Ray tasks on that cluster
    (`local`, `auto`, `HOST:PORT`); every node must reach `path` the same way.
    """
    root = _input_root(path)
    source = source or (Path(root.split("://", 1)[1].rstrip("/")).name if isinstance(root, str)
                        else root.resolve().name)
    workers = workers or os.cpu_count() or 1
    choice = None if aligned else choose_detector(workspace, detector, det_threshold, upsample, strict=True)
    spec = choice.spec if choice else None
    options = IngestOptions(root=str(workspace.root), aligned=aligned, detector=spec)
    params = {"path": root if isinstance(root, str) else str(root.resolve()), "source": source,
              "aligned": aligned,
              "workers": workers, "detector": spec.key if spec else None,
              "det_threshold": det_threshold, "upsample": upsample, "ray": ray}
    summary = IngestSummary(source=source)
    stats = WalkStats()
    work = partial(_process_entry, options=options)
    # Worker processes are forked before the manifest is opened: no DuckDB threads are copied.
    with work_mapper(workers, ray) as mapper, open_run(workspace, "ingest", params) as (con, run):
        summary.run_id = run.run_id
        if spec is not None:
            check_one_detector(con, spec.key)
            record_detector(con, spec)
        _clear_partial_writes(workspace.root / TMP_DIR)
        # A local folder is counted first (names and sizes only: seconds at a million files), so
        # the bar's total and time left are right from the start; a remote one grows as it is listed.
        expected = None if isinstance(root, str) else sum(1 for _ in walk_images(root))
        in_flight: deque[Iterable[FileResult]] = deque()

        def drain() -> None:
            results = []
            for result in in_flight.popleft():
                results.append(result)
                summary.processed += 1
                if progress:
                    progress(summary.processed + summary.already_ingested, expected or summary.files_seen)
            _commit(con, results, source, run.run_id, summary, spec.key if spec else None)
            summary.ray_nodes = nodes_used(mapper)
            run.counts = summary.as_dict()

        # Chunk k+1 is queued to the workers before chunk k is committed: no idle cores.
        walk = walk_uri(root, stats) if isinstance(root, str) else walk_images(root, stats)
        for chunk in chunked(walk, chunk_size):
            summary.files_seen += len(chunk)
            summary.odd_names += sum(display_path(e.path) != e.path for e in chunk)
            todo = _not_yet_ingested(con, chunk)
            summary.already_ingested += len(chunk) - len(todo)
            in_flight.append(mapper(work, todo))
            if len(in_flight) > 1:
                drain()
        while in_flight:
            drain()
        summary.skipped_other = stats.skipped_other
        summary.hints = detection_hints(summary, spec) + ([choice.note] if choice and choice.note else [])
        run.counts = summary.as_dict()
    summary.require_images(root)
    return summary


def _input_root(path: str | os.PathLike[str]) -> Path | str:
    """A local folder or file (which must exist), or a URI whose filesystem pyarrow knows."""
    if is_uri(path):
        import pyarrow.fs as pafs

        try:
            pafs.FileSystem.from_uri(str(path))
        except (ValueError, OSError) as exc:
            raise WorkbenchError(f"cannot open {path}: {str(exc).splitlines()[0]}") from None
        return str(path)
    root = Path(path).expanduser()
    if not root.exists():
        raise WorkbenchError(f"no such file or directory: {root}")
    return root


def detection_hints(summary: IngestSummary, spec: DetectorSpec | None) -> list[str]:
    """Tell the user when the detector, not the images, is the likely reason for missing faces."""
    no_face = summary.rejected.get("no face", 0)
    if spec is None or spec.kind != "dlib" or summary.decoded < 20 or no_face < 0.2 * summary.decoded:
        return []
    return [f"{no_face} of {summary.decoded} decoded images had no face: dlib's HOG detector misses "
            "faces under ~80 px and turned heads; try --detector yunet (shipped) or scrfd:PATH, or "
            "--upsample 1 (about 4x slower), in a new workspace"]


def check_one_detector(con: duckdb.DuckDBPyConnection, key: str) -> None:
    """Refuse to mix detectors in one workspace: faces from two detectors differ in
    what they find and how they align, so mixing is never silent."""
    # Faces detected before detector keys were recorded (schema < 9) were all found by dlib.
    other = con.execute(
        "SELECT d, count(*) FROM (SELECT coalesce(detector, CASE WHEN det_score IS NOT NULL "
        "THEN $old END) AS d FROM faces) "
        "WHERE d IS NOT NULL AND d <> $key AND NOT (d = $old AND $key LIKE 'dlib-%') "
        "GROUP BY 1 ORDER BY 2 DESC LIMIT 1", {"key": key, "old": BEFORE_KEYS}).fetchone()
    if other:
        raise WorkbenchError(f"this workspace's {other[1]} detected faces came from {other[0]}, not "
                             f"{key}: use the same --detector, or a new workspace (-w) for another")


def _clear_partial_writes(tmp_dir: Path) -> None:
    """Remove what a killed run left half-written (we hold the lock: nobody else writes)."""
    if tmp_dir.is_dir():
        for entry in os.scandir(tmp_dir):
            os.unlink(entry.path)


def _process_entry(entry: FileEntry, options: IngestOptions) -> FileResult:
    return process_file(entry.path, entry.size, entry.mtime_ns, options)


def _not_yet_ingested(con: duckdb.DuckDBPyConnection, chunk: list[FileEntry]) -> list[FileEntry]:
    """Entries whose path is new or whose size/mtime changed since it was recorded."""
    walked = pa.table({
        "path": [display_path(e.path) for e in chunk],
        "size": pa.array([e.size for e in chunk], pa.int64()),
        "mtime_ns": pa.array([e.mtime_ns for e in chunk], pa.int64()),
    })
    with registered(con, walked=walked):
        known = {
            row[0]
            for row in con.execute(
                "SELECT w.path FROM walked w JOIN files f "
                "ON f.path = w.path AND f.size = w.size AND f.mtime_ns = w.mtime_ns"
            ).fetchall()
        }
    return [e for e in chunk if display_path(e.path) not in known]


def _commit(
    con: duckdb.DuckDBPyConnection,
    results: list[FileResult],
    source: str,
    run_id: str,
    summary: IngestSummary,
    detector: str | None,
) -> None:
    if not results:
        return
    ids = [r.image_id for r in results if r.image_id is not None]
    with registered(con, batch_ids=pa.table({"image_id": pa.array(ids, pa.string())})):
        existing = {row[0] for row in con.execute(
            "SELECT DISTINCT b.image_id FROM batch_ids b JOIN images i USING (image_id)"
        ).fetchall()}
    new_images: dict[str, FileResult] = {}
    for r in results:
        summary.decoded += r.width is not None
        if r.image_id is None:
            summary.rejected[r.reason or "unreadable"] += 1
        elif r.image_id in existing or r.image_id in new_images:
            summary.exact_duplicates += 1
        else:
            new_images[r.image_id] = r
            if r.status == "rejected":
                summary.rejected[r.reason or "rejected"] += 1
    faces = [(r.image_id, f) for r in new_images.values() for f in r.faces]
    summary.new_images += len(new_images)
    summary.faces += len(faces)
    new_image_rows = pa.table({
        "image_id": pa.array(list(new_images), pa.string()),
        "status": [r.status for r in new_images.values()],
        "reason": pa.array([r.reason for r in new_images.values()], pa.string()),
        "width": pa.array([r.width for r in new_images.values()], pa.int32()),
        "height": pa.array([r.height for r in new_images.values()], pa.int32()),
        "format": pa.array([r.format for r in new_images.values()], pa.string()),
        "phash": pa.array([r.phash for r in new_images.values()], pa.uint64()),
        "phash_mirror": pa.array([r.phash_mirror for r in new_images.values()], pa.uint64()),
        "n_faces": pa.array([len(r.faces) for r in new_images.values()], pa.int32()),
    })
    new_face_rows = pa.table({
        "face_id": pa.array([f.face_id for _, f in faces], pa.string()),
        "image_id": pa.array([i for i, _ in faces], pa.string()),
        "face_index": pa.array([f.face_index for _, f in faces], pa.int32()),
        "crop_rel": pa.array([f.crop_rel for _, f in faces], pa.string()),
        "det_score": pa.array([f.det_score for _, f in faces], pa.float32()),
        "bbox": pa.array([f.bbox for _, f in faces], pa.list_(pa.float32())),
        "landmarks": pa.array([f.landmarks for _, f in faces], pa.list_(pa.float32())),
        "face_size": pa.array([f.face_size for _, f in faces], pa.float32()),
        "blur": pa.array([f.blur for _, f in faces], pa.float32()),
        "brightness": pa.array([f.brightness for _, f in faces], pa.float32()),
        "quality": pa.array([f.quality for _, f in faces], pa.float32()),
        "crop_phash": pa.array([f.crop_phash for _, f in faces], pa.uint64()),
        "crop_phash_mirror": pa.array([f.crop_phash_mirror for _, f in faces], pa.uint64()),
        "context": pa.array([f.context for _, f in faces], pa.binary()),
        "detector": pa.array([detector for r in new_images.values() for _ in r.faces], pa.string()),
    })
    new_file_rows = pa.table({
        "path": [display_path(r.path) for r in results],
        "image_id": pa.array([r.image_id for r in results], pa.string()),
        "size": pa.array([r.size for r in results], pa.int64()),
        "mtime_ns": pa.array([r.mtime_ns for r in results], pa.int64()),
        "reason": pa.array([r.reason if r.image_id is None else None for r in results],
                           pa.string()),
    })
    with registered(con, new_images=new_image_rows, new_faces=new_face_rows, new_files=new_file_rows), \
            transaction(con):
        con.execute(
            "INSERT INTO images (image_id, status, reason, width, height, format, phash, n_faces, "
            "run_id, phash_mirror) SELECT image_id, status, reason, width, height, format, phash, "
            "n_faces, ?, phash_mirror FROM new_images ON CONFLICT DO NOTHING", [run_id])
        con.execute(
            "INSERT INTO faces (face_id, image_id, face_index, crop_rel, det_score, bbox, landmarks, "
            "face_size, blur, brightness, quality, run_id, crop_phash, detector, crop_phash_mirror, "
            "context) SELECT face_id, image_id, face_index, crop_rel, det_score, "
            "bbox::REAL[4], landmarks::REAL[10], face_size, blur, brightness, quality, ?, "
            "crop_phash, detector, crop_phash_mirror, context FROM new_faces ON CONFLICT DO NOTHING",
            [run_id])
        con.execute("DELETE FROM files WHERE path IN (SELECT path FROM new_files)")
        con.execute(
            "INSERT INTO files (path, source, image_id, size, mtime_ns, reason, run_id) "
            "SELECT path, ?, image_id, size, mtime_ns, reason, ? FROM new_files",
            [source, run_id])
