"""Ingest throughput beside a floor and a peer, measured in the same run.

    python benchmarks/ingest.py [--lfw ../shared/data/lfw150] [--aligned-count 3000]

Floor: a plain loop that only reads, decodes (PIL, to RGB) and sha256-hashes
each file. Peer: FiftyOne's `Dataset.from_dir` on the same folder (skipped if
fiftyone is not importable). Workbench: `wb ingest` with 2 workers, for
pre-aligned 112x112 crops (`--aligned`) and for detection on lfw150.
Targets (2-core machine): aligned >= 0.5x the floor; detection >= 30 images/s.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from workbench.formats.walk import walk_images
from workbench.ingest.pipeline import run_ingest
from workbench.manifest.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


def floor_rate(folder: Path) -> tuple[int, float]:
    start, n = time.perf_counter(), 0
    for entry in walk_images(folder):
        data = Path(entry.path).read_bytes()
        hashlib.sha256(data).hexdigest()
        with Image.open(entry.path) as image:
            np.asarray(image.convert("RGB"))
        n += 1
    return n, n / (time.perf_counter() - start)


def workbench_rate(folder: Path, aligned: bool, workers: int = 2) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as ws:
        start = time.perf_counter()
        summary = run_ingest(Workspace.at(ws), folder, aligned=aligned, workers=workers)
        return summary.processed, summary.processed / (time.perf_counter() - start)


def fiftyone_rate(folder: Path) -> float | None:
    try:
        import fiftyone as fo
    except ImportError:
        return None
    start = time.perf_counter()
    dataset = fo.Dataset.from_dir(dataset_dir=str(folder), dataset_type=fo.types.ImageDirectory)
    rate = len(dataset) / (time.perf_counter() - start)
    dataset.delete()
    return rate


def make_aligned(lfw: Path, out: Path, count: int) -> Path:
    """112x112 JPEG crops from the centre of lfw150 images: MS1MV2-like input."""
    out.mkdir(parents=True, exist_ok=True)
    for i, entry in enumerate(walk_images(lfw)):
        if i >= count:
            break
        with Image.open(entry.path) as image:
            image.convert("RGB").crop((19, 19, 131, 131)).save(out / f"{i:06d}.jpg", quality=95)
    return out


def report(name: str, n: int, floor: float, ours: float, peer: float | None) -> None:
    print(f"{name}: {n} images")
    print(f"  floor (read+decode+sha256, 1 process): {floor:8.1f} images/s")
    print(f"  wb ingest (2 workers):                {ours:8.1f} images/s  ratio {ours / floor:.2f}")
    if peer is not None:
        print(f"  fiftyone Dataset.from_dir:            {peer:8.1f} images/s  ratio {peer / floor:.2f}")
    else:
        print("  fiftyone Dataset.from_dir:            skipped (fiftyone not installed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=ROOT.parent / "shared" / "data" / "lfw150")
    parser.add_argument("--aligned-count", type=int, default=3000)
    args = parser.parse_args()
    if not args.lfw.is_dir():
        raise SystemExit(f"lfw150 not found at {args.lfw}; pass --lfw")
    with tempfile.TemporaryDirectory() as tmp:
        aligned = make_aligned(args.lfw, Path(tmp) / "aligned", args.aligned_count)
        n, floor = floor_rate(aligned)
        _, ours = workbench_rate(aligned, aligned=True)
        report("aligned 112x112 crops", n, floor, ours, fiftyone_rate(aligned))
    n, floor = floor_rate(args.lfw)
    _, ours = workbench_rate(args.lfw, aligned=False)
    report("lfw150 with detection", n, floor, ours, fiftyone_rate(args.lfw))
    print(f"detection target >= 30 images/s: {'met' if ours >= 30 else 'MISSED'} ({ours:.1f})")


if __name__ == "__main__":
    main()
