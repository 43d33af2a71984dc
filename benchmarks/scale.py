"""The whole loop at MS1MV2's scale: a 5.8M-record labeled set and a million web faces, timed.

    python benchmarks/scale.py [--scale 1.0] [--dim 128] [--work /tmp/wb_scale]

Builds once (cached under `--work`, reused by later runs):
- a synthetic MS1MV2-shaped S: `train.rec/.idx/property` with 5.8M x scale records
  of 112x112 JPEGs under 85,742 x scale labels with a long-tailed identity size
  (log-normal, median ~50 as MS1MV2's), the bytes drawn from a pool of 512
  generated crops (bytes repeat, as the issue allows);
- a web folder of 1M x scale aligned crops, each file distinct (the pool's
  JPEGs with a unique comment segment), in 1,000-file sub-folders;
- synthetic vectors with identity structure: a centre per S identity plus noise;
  web faces are planted overlaps (3%: new photos of S identities), planted
  near-duplicates (2%: a web face's vector plus slight noise) and strangers
  (new centres). They are imported with `wb embed --import`.
Then runs each step as a user would (`wb ...` in a fresh process) and prints,
per step: items, seconds, items/s and the process's peak RSS (or its workers',
whichever is larger; at least the ~0.1 GiB of this driver, which Linux carries
over into each process it starts), and the
curation figures against the planted truth. Each finished step is recorded in
`--work/state-DIM.json`: a rerun resumes after the last finished step (delete the
file, or the folder, to start over); `--until STEP` stops after the step named.
The figures: README, "At MS1MV2 scale".
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from workbench.formats.recordio import write_insightface_rec

MS1MV2_RECORDS, MS1MV2_IDS, WEB = 5_822_653, 85_742, 1_000_000
POOL = 512
SET = "ms1mv2-synthetic"
MODEL = "synthetic"


def jpeg_pool(rng: np.random.Generator, size: int = POOL) -> list[bytes]:
    """Smooth random 112x112 crops as JPEG (1-3 kB each, like MS1MV2's)."""
    out = []
    for _ in range(size):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((112, 112), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=75)
        out.append(buf.getvalue())
    return out


def identity_sizes(n_ids: int, n_records: int, rng: np.random.Generator) -> np.ndarray:
    """Long-tailed identity sizes (log-normal, at least 2) summing to `n_records`."""
    raw = np.maximum(2, rng.lognormal(np.log(50), 0.8, n_ids))
    sizes = np.maximum(2, np.round(raw * n_records / raw.sum())).astype(np.int64)
    sizes[np.argmax(sizes)] += n_records - sizes.sum()
    return sizes


def unique_jpeg(data: bytes, tag: int) -> bytes:
    """The same pixels, distinct bytes: a JPEG comment segment after SOI."""
    comment = f"wb-scale {tag}".encode()
    return data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]


def build_data(work: Path, scale: float, seed: int = 0) -> dict:
    done = work / "data.json"
    if done.exists():
        return json.loads(done.read_text())
    rng = np.random.default_rng(seed)
    pool = jpeg_pool(rng)
    n_ids = max(10, round(MS1MV2_IDS * scale))
    sizes = identity_sizes(n_ids, max(2 * n_ids, round(MS1MV2_RECORDS * scale)), rng)
    labels = np.repeat(np.arange(n_ids), sizes)
    rec = work / "s" / "train.rec"
    start = time.perf_counter()
    write_insightface_rec(rec, ((int(label), pool[i % POOL]) for i, label in enumerate(labels)),
                          num_classes=n_ids)
    rec_seconds = time.perf_counter() - start
    n_web = max(100, round(WEB * scale))
    web = work / "web"
    for i in range(n_web):
        folder = web / f"{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:07d}.jpg").write_bytes(unique_jpeg(pool[int(rng.integers(POOL))], i))
    info = {"records": len(labels), "identities": int(n_ids), "web": n_web, "rec": str(rec),
            "web_dir": str(web), "rec_write_seconds": round(rec_seconds, 1)}
    done.write_text(json.dumps(info))
    return info


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_vectors(work: Path, ws: Path, info: dict, dim: int, seed: int = 0) -> dict:
    """Parquet files of S's and the web faces' vectors, and the planted truth."""
    import duckdb

    out = work / f"vectors-{dim}"
    if (out / "truth.json").exists():
        return json.loads((out / "truth.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + dim)
    n_ids = info["identities"]
    centres = unit(rng.standard_normal((n_ids, dim), dtype=np.float32))
    noise = 0.9 / np.sqrt(dim)  # per-coordinate: photos of one person at cosine ~0.55 to each other
    con = duckdb.connect(str(ws / "manifests" / "wb.duckdb"), read_only=True)
    samples = con.execute("SELECT sample_idx, label FROM wb_labeled_samples WHERE set_name = ? "
                          "ORDER BY sample_idx", [SET]).fetchnumpy()
    faces = con.execute("SELECT face_id FROM wb_faces ORDER BY face_id").fetchnumpy()["face_id"]
    con.close()
    chunk = 500_000
    schema = pa.schema([("face_id", pa.string()), ("set_name", pa.string()), ("sample_idx", pa.int64()),
                        ("vector", pa.list_(pa.float32()))])
    writer = pq.ParquetWriter(out / "vectors.parquet", schema)  # one file: a model name binds one file

    def write(face_id: list | None, set_name: list | None, sample_idx: np.ndarray | None,
              vec: np.ndarray) -> None:
        n = len(vec)
        writer.write_table(pa.table({"face_id": face_id or [None] * n, "set_name": set_name or [None] * n,
                                     "sample_idx": sample_idx if sample_idx is not None else [None] * n,
                                     "vector": pa.FixedSizeListArray.from_arrays(vec.ravel(), dim).cast(
                                         pa.list_(pa.float32()))}, schema=schema))

    for start in range(0, len(samples["label"]), chunk):
        lab = samples["label"][start : start + chunk]
        vec = unit(centres[lab] + noise * rng.standard_normal((len(lab), dim), dtype=np.float32))
        write(None, [SET] * len(lab), samples["sample_idx"][start : start + chunk], vec)
    n = len(faces)
    kind = rng.choice(np.array(["overlap", "duplicate", "stranger"]), n, p=[0.03, 0.02, 0.95])
    stranger_centres = unit(rng.standard_normal((max(1, n // 3), dim), dtype=np.float32))
    person = np.where(kind == "overlap", rng.integers(0, n_ids, n), rng.integers(0, len(stranger_centres), n))
    base = np.where((kind == "overlap")[:, None], centres[np.minimum(person, n_ids - 1)],
                    stranger_centres[person % len(stranger_centres)])
    vectors = unit(base + noise * rng.standard_normal((n, dim), dtype=np.float32))
    originals = rng.choice(np.flatnonzero(kind == "stranger"), int((kind == "duplicate").sum()))
    dup = np.flatnonzero(kind == "duplicate")
    vectors[dup] = unit(vectors[originals] + 0.02 / np.sqrt(dim) * rng.standard_normal((len(dup), dim),
                                                                                         dtype=np.float32))
    for start in range(0, n, chunk):
        write(list(faces[start : start + chunk]), None, None, vectors[start : start + chunk])
    writer.close()
    truth = {"overlap": faces[kind == "overlap"].tolist(),
             "duplicate_pairs": [[faces[a], faces[b]] for a, b in zip(originals, dup, strict=True)]}
    (out / "truth.json").write_text(json.dumps(truth))
    return truth


def vectors_elsewhere(work: Path, ws: Path, info: dict, dim: int) -> dict:
    """`write_vectors` in a process of its own. Linux keeps a process's peak RSS across exec, so
    every `wb` this driver starts would report at least the driver's own peak: it stays small."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(write_vectors, work, ws, info, dim).result()


# Runs `wb` and reports the peak RSS of the process or of its worker processes, whichever is larger.
WRAPPER = """
import atexit, resource, sys
def report():
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    sys.stderr.write(f"\\nWB_PEAK_RSS_KB {rss}\\n")
atexit.register(report)
from workbench.cli import app
app(prog_name="wb")
"""


def run_step(args: list[str]) -> tuple[float, float, dict]:
    """`wb ARGS --json` in a fresh process: (seconds, peak RSS in GiB, its JSON)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *args, "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"wb {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    rss = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("WB_PEAK_RSS_KB")]
    # the result is the last JSON object, printed from a line of its own; anything before it is
    # shown (a full-scale ingest once printed '{}' ahead of it)
    start = proc.stdout.rfind("\n{\n") + 1
    if proc.stdout[:start].strip():
        print(f"  (stdout before the result: {proc.stdout[:start].strip()[:300]!r})", flush=True)
    return seconds, (rss[-1] / 2**20 if rss else float("nan")), json.loads(proc.stdout[start:] or "{}")


def one_image(ws: Path) -> str:
    """A web image still in the workspace (the first by id), to forget."""
    import duckdb

    con = duckdb.connect(str(ws / "manifests" / "wb.duckdb"), read_only=True)
    try:
        return con.execute("SELECT image_id FROM wb_images WHERE source = 'web' ORDER BY image_id LIMIT 1"
                           ).fetchone()[0]
    finally:
        con.close()


def curation(ws: Path, truth: dict) -> dict:
    """Overlap recall and precision, duplicate pairs found, against the planted truth still in the
    workspace (a rerun after the forget steps must not count erased faces as misses)."""
    import duckdb

    con = duckdb.connect(str(ws / "manifests" / "wb.duckdb"), read_only=True)
    present = {r[0] for r in con.execute("SELECT face_id FROM wb_faces").fetchall()}
    decided = dict(con.execute("SELECT face_id, decision FROM wb_overlap").fetchall())
    group = dict(con.execute("SELECT face_id, group_id FROM wb_dups").fetchall())
    con.close()
    planted = set(truth["overlap"]) & present
    pairs = [(a, b) for a, b in truth["duplicate_pairs"] if a in present and b in present]
    excluded = {f for f, d in decided.items() if d in ("copy", "overlap", "ambiguous")}
    strangers = len(set(decided) - planted)
    found_pairs = sum(group.get(a) is not None and group.get(a) == group.get(b) for a, b in pairs)
    return {"overlap_recall": len(excluded & planted) / max(1, len(planted)),
            "strangers_excluded": len(excluded - planted) / max(1, strangers),
            "duplicate_pairs_found": found_pairs / max(1, len(pairs)), "faces": len(present)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="share of MS1MV2's size (0.05: quick)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--work", type=Path, default=Path("/tmp/wb_scale"))
    parser.add_argument("--until", metavar="STEP",
                        help="stop after the first step whose name starts with STEP (a later run resumes)")
    args = parser.parse_args()
    work = args.work / f"scale-{args.scale:g}"
    work.mkdir(parents=True, exist_ok=True)
    ws = work / f"ws-{args.dim}"
    state_path = work / f"state-{args.dim}.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    start = time.perf_counter()
    info = build_data(work, args.scale)
    print(f"data: {info['records']:,} labeled records of {info['identities']:,} identities, "
          f"{info['web']:,} web files ({time.perf_counter() - start:.0f} s to build or find)", flush=True)
    model = f"imported:{MODEL}"
    w = ["-w", str(ws)]
    vectors = work / f"vectors-{args.dim}"
    steps: list[tuple[str, int, list[str] | None]] = [
        ("labeled add --aligned", info["records"], ["labeled", "add", SET, str(Path(info["rec"]).parent),
                                                   "--format", "rec", "--aligned", *w]),
        ("ingest --aligned (1,000 to forget)", 1000, ["ingest", str(Path(info["web_dir"]) / "0000"),
                                                      "--aligned", "--source", "forget-me", *w]),
        ("ingest --aligned (web)", info["web"], ["ingest", info["web_dir"], "--aligned", "--source", "web",
                                                 *w]),
        ("vectors written (synthetic)", 0, None),
        ("embed --import (S and web)", info["records"] + info["web"],
         ["embed", "--import", str(vectors / "vectors.parquet"), "--model-name", MODEL, *w]),
        ("calibrate", info["records"], ["calibrate", "--labeled", SET, "--model", model, *w]),
        ("overlap", info["web"], ["overlap", "--labeled", SET, "--model", model, *w]),
        ("dedupe", info["web"], ["dedupe", "--model", model, *w]),
        ("audit labeled", info["records"], ["audit", "labeled", SET, "--model", model, *w]),
        ("split", info["web"], ["split", "--min-quality", "0", *w]),
        ("status", info["web"] + info["records"], ["status", *w]),
        # face ids are hex digests: those below '1a' are about a tenth (100k of a million)
        ("browse --no-launch (a tenth of the faces)", 0,
         ["browse", "--no-launch", "--where", "face_id < '1a'", *w]),
        ("export --format rec (train_unlabeled)", 0, ["export", "--split", "train_unlabeled", "--format",
                                                      "rec", "--out", str(work / "export"), *w]),
        *[(f"forget --image --no-compact (#{i + 1})", 1, None) for i in range(10)],
        ("compact (the ten erasures)", 10, ["compact", *w]),
        ("forget --source (1,000 images, compacts)", 1000,
         ["forget", "--source", "forget-me", "--reason", "bench", *w]),
        ("train --steps 50 (reads the labeled rec)", 50 * 64,
         ["train", "--labeled", SET, "--steps", "50", "--backbone", "r18", "--width", "0.25", "--input-size",
          "56", "--embedding-size", "128", "--batch-size", "64", *w]),
    ]
    truth: dict = {}
    print(f"{'step':<40} {'items':>10} {'seconds':>9} {'items/s':>10} {'peak RSS GiB':>12}", flush=True)
    for name, items, wb_args in steps:
        if name in state:
            seconds, rss, items = state[name]
            truth = truth or (vectors_elsewhere(work, ws, info, args.dim) if name == "split" else {})
        elif name.startswith("forget --image"):  # ten requests in a row, one rewrite after them
            seconds, rss, _ = run_step(["forget", "--image", one_image(ws), "--reason", "bench",
                                        "--no-compact", *w])
        elif wb_args is None:
            t0 = time.perf_counter()
            truth = vectors_elsewhere(work, ws, info, args.dim)
            seconds, rss, items = time.perf_counter() - t0, float("nan"), info["web"] + info["records"]
        else:
            if name.startswith("export"):
                import shutil

                shutil.rmtree(work / "export", ignore_errors=True)
            seconds, rss, result = run_step(wb_args)
            items = items or int(result.get("faces") or result.get("images") or result.get("samples") or 0)
        state[name] = [seconds, rss, items]
        if name == "split":  # each run: the planted faces still present (forget erases some)
            state["curation"] = curation(ws, truth or vectors_elsewhere(work, ws, info, args.dim))
        state_path.write_text(json.dumps(state))
        rate = f"{items / seconds:,.0f}" if items and seconds > 0 else ""
        print(f"{name:<40} {items:>10,} {seconds:>9.1f} {rate:>10} {rss:>12.2f}", flush=True)
        if args.until and name.startswith(args.until):
            return
    print("curation against the planted truth still in the workspace:", json.dumps(state["curation"]))


if __name__ == "__main__":
    main()
