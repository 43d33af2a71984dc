"""FiftyOne sync time for 100k faces beside a naive per-sample `add_sample` loop.

    python benchmarks/browse_sync.py [--faces 100000] [--naive 5000] [--work /tmp/browsebench]

Builds a manifest of `--faces` faces with every fact the sync carries (split
and reason, duplicate groups, overlap with a 10k-identity labeled set,
rejection scores of a run, 128-d embeddings for the map), written with SQL so
that the benchmark measures the sync, not ingest. Then, in the same run and the
same FiftyOne database: the workbench's first sync, a re-sync with nothing
changed, a re-sync after every face got new scores, and the naive baseline
(one `dataset.add_sample` per face with the same fields) on `--naive` faces,
scaled linearly. Target: the first sync of 100k faces in at most 120 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def build_manifest(root: Path, faces: int) -> None:
    from workbench.manifest.workspace import Workspace

    ws = Workspace.at(root)
    with ws.connect() as con:
        con.execute("SET VARIABLE n = ?", [faces])
        con.execute("""INSERT INTO images SELECT printf('%064x', i), 'ok', NULL, 250, 250, 'jpeg', NULL, 1,
                       'bench' FROM range(getvariable('n')) t(i)""")
        con.execute("""INSERT INTO files SELECT printf('web/%08d.jpg', i), 'web', printf('%064x', i),
                       20000, 0, NULL, 'bench' FROM range(getvariable('n')) t(i)""")
        con.execute("""INSERT INTO faces (face_id, image_id, face_index, crop_rel, det_score, bbox, landmarks,
                       face_size, blur, brightness, quality, run_id)
                       SELECT printf('%064x', i) || ':0', printf('%064x', i), 0,
                       printf('crops/%08d.jpg', i), 1.0, [60, 60, 190, 190]::REAL[4],
                       [90, 110, 160, 110, 125, 140, 95, 170, 155, 170]::REAL[10], 130, 50, 0.5,
                       (hash(i) % 1000) / 1000.0, 'bench' FROM range(getvariable('n')) t(i)""")
        con.execute("""INSERT INTO labeled_identities SELECT 'ms1m', i, printf('m.%06d', i), 60
                       FROM range(10000) t(i)""")
        con.execute("""INSERT INTO overlap SELECT face_id, 'ms1m', (hash(face_id) % 10000)::INTEGER,
                       quality * 0.6, quality * 0.6, NULL,
                       CASE WHEN quality > 0.95 THEN 'overlap' WHEN quality > 0.9 THEN 'ambiguous'
                       ELSE 'clean' END, 'bench' FROM faces""")
        con.execute("""INSERT INTO dups SELECT face_id, 'g' || (row_number() OVER (ORDER BY face_id) // 2),
                       row_number() OVER (ORDER BY face_id) % 2 = 0, 'bench' FROM faces""")
        con.execute("""INSERT INTO splits SELECT image_id, face_id,
                       CASE WHEN quality > 0.9 THEN 'excluded' ELSE 'train_unlabeled' END,
                       CASE WHEN quality > 0.9 THEN 'overlap' END, 'bench' FROM faces""")
        con.execute("""INSERT INTO train_runs VALUES ('bench-run', 'done', '{"labeled": "ms1m"}', NULL, NULL,
                       100, NULL, NULL, now(), now())""")
        set_scores(con, seed=0)
        dim = 128
        vectors = np.random.default_rng(0).standard_normal((faces, dim)).astype("<f4")
        (root / "embeddings" / "bench").mkdir(parents=True, exist_ok=True)
        vectors.tofile(root / "embeddings" / "bench" / "vectors.f32")
        con.execute("INSERT INTO embedding_models VALUES ('bench', 'dlib', '', false, ?, now())", [dim])
        con.execute("INSERT INTO embeddings SELECT 'bench', face_id, "
                    "row_number() OVER (ORDER BY face_id) - 1 FROM faces")


def set_scores(con, seed: int) -> None:
    con.execute("DELETE FROM scores WHERE run_id = 'bench-run'")
    con.execute("""INSERT INTO scores SELECT 'bench-run', face_id, (hash(face_id || ?) % 1000) / 1000.0,
                   (hash(face_id) % 10000)::INTEGER, 1.0 FROM faces""", [str(seed)])


def naive(fo, root: Path, limit: int) -> float:
    """One `add_sample` per face, the way a first script would do it."""
    import duckdb

    con = duckdb.connect(str(root / "manifests" / "wb.duckdb"), read_only=True)
    rows = con.execute("""
        SELECT f.face_id, f.crop_rel, f.quality, s.split, s.reason, d.group_id, o.decision, o.similarity,
               i.identity, c.max_prob
        FROM faces f JOIN splits s USING (face_id) JOIN dups d USING (face_id)
        JOIN overlap o USING (face_id) JOIN labeled_identities i ON i.label = o.nearest_label
        JOIN scores c USING (face_id) ORDER BY face_id LIMIT ?""", [limit]).fetchall()
    con.close()
    dataset = fo.Dataset("bench-naive")
    start = time.perf_counter()
    for face_id, crop, quality, split, reason, group, decision, similarity, identity, max_prob in rows:
        dataset.add_sample(fo.Sample(
            filepath=str(root / crop), face_id=face_id, quality=quality, split=split,
            exclusion_reason=reason, dup_group=group, overlap_decision=decision, max_prob=max_prob,
            overlap=fo.Classification(label=identity, confidence=similarity)))
    elapsed = time.perf_counter() - start
    dataset.delete()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--naive", type=int, default=5_000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "browsebench")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    os.environ["FIFTYONE_DATABASE_DIR"] = str(args.work / "fiftyone-db")

    from workbench.browse.app import load_fiftyone
    from workbench.browse.sync import run_browse_sync
    from workbench.manifest.workspace import Workspace

    fo = load_fiftyone()
    for name in ("bench", "bench-naive"):  # left by an interrupted run, if its database still runs
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
    root = args.work / "ws"
    start = time.perf_counter()
    build_manifest(root, args.faces)
    print(f"manifest of {args.faces:,} faces built in {time.perf_counter() - start:.1f} s")
    ws = Workspace.at(root)

    def timed(label: str) -> float:
        start = time.perf_counter()
        summary = run_browse_sync(ws, dataset_name="bench")
        elapsed = time.perf_counter() - start
        print(f"{label}: {elapsed:.1f} s (added {summary.added:,}, updated {summary.updated_fields})")
        return elapsed

    first = timed("workbench first sync")
    timed("re-sync, nothing changed")
    with ws.connect() as con:
        set_scores(con, seed=1)
    timed("re-sync after new scores for every face")
    base = naive(fo, root, args.naive)
    scaled = base * args.faces / args.naive
    print(f"naive add_sample loop: {base:.1f} s for {args.naive:,} -> {scaled:.0f} s "
          f"scaled to {args.faces:,}")
    print(f"ratio workbench / naive = {first / scaled:.3f}  (first sync {first:.0f} s; target <= 120 s)")
    fo.delete_dataset("bench")


if __name__ == "__main__":
    main()
