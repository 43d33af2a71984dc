"""Detectors and embedding models through the real pipeline, each against dlib in the same run.

    python benchmarks/detectors.py [--images 1500] [--work /tmp/bench_detectors]

For lfw150 (150 px photos, large faces) and celeba10k (89x109, small faces),
the same `--images` files are ingested into a fresh workspace per detector:
dlib (HOG), dlib with `--upsample 1`, YuNet (s and n) and SCRFD-500M, all
cores. Printed: images/s, images with a face, and ratios to dlib. Then the
faces YuNet found on lfw150 are embedded by dlib's ResNet and by
MobileFaceNet (ONNX) through `wb embed`: faces/s and the ratio.
Targets (issue 14): YuNet >= 0.9x dlib's images/s with at least its face
rate on lfw150; on celeba10k at least dlib-upsample's faces at >= 3x its
speed; MobileFaceNet >= 10x dlib's faces/s.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from workbench.embed.compute import run_embed
from workbench.ingest.pipeline import run_ingest
from workbench.manifest.workspace import Workspace

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS = SHARED / "models"


def sample_folder(files: list[Path], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        link = out / f"{path.parent.name}_{path.name}"
        if not link.exists():
            link.symlink_to(path)
    return out


def timed_ingest(folder: Path, ws_dir: Path, detector: str, upsample: int = 0) -> tuple[float, int, int]:
    shutil.rmtree(ws_dir, ignore_errors=True)
    start = time.perf_counter()
    summary = run_ingest(Workspace.at(ws_dir), folder, detector=detector, upsample=upsample)
    seconds = time.perf_counter() - start
    return summary.processed / seconds, summary.new_images - summary.rejected.get("no face", 0), \
        summary.processed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_detectors"))
    args = parser.parse_args()
    lfw = sorted((SHARED / "data" / "lfw150").glob("*/*.jpg"))
    celeba = sorted((SHARED / "data" / "celeba10k" / "images").glob("*.jpg"))
    detectors = [("dlib", "dlib", 0), ("dlib --upsample 1", "dlib", 1),
                 ("yunet_s", f"yunet:{MODELS / 'yunet_s_640_640.onnx'}", 0),
                 ("yunet_n", f"yunet:{MODELS / 'yunet_n_640_640.onnx'}", 0),
                 ("scrfd_500m", f"scrfd:{MODELS / 'scrfd_500m_kps.onnx'}", 0)]
    for name, files in (("lfw150", lfw), ("celeba10k", celeba)):
        step = max(1, len(files) // args.images)
        folder = sample_folder(files[::step][: args.images], args.work / f"{name}-input")
        print(f"\n{name}: {len(list(folder.iterdir()))} images")
        results = {}
        for label, detector, upsample in detectors:
            rate, found, processed = timed_ingest(folder, args.work / f"{name}-{label.replace(' ', '')}",
                                                detector, upsample)
            results[label] = (rate, found)
            print(f"  {label:<18} {rate:7.1f} images/s   faces in {found}/{processed} images")
        base_rate, base_found = results["dlib"]
        up_rate, up_found = results["dlib --upsample 1"]
        for label in ("yunet_s", "yunet_n", "scrfd_500m"):
            rate, found = results[label]
            print(f"  {label}: {rate / base_rate:.2f}x dlib's speed, {found / max(base_found, 1):.2f}x its "
                  f"faces; {rate / up_rate:.2f}x dlib-upsample's speed, {found / max(up_found, 1):.2f}x "
                  "its faces")

    ws = Workspace.at(args.work / "lfw150-yunet_s")
    timings = {}
    for label, model in (("dlib", "dlib"), ("mobilefacenet", f"onnx:{MODELS / 'mobilefacenet_128d.onnx'}")):
        start = time.perf_counter()
        counts = run_embed(ws, model=model)
        timings[label] = counts.unlabeled_computed / (time.perf_counter() - start)
        print(f"\nembed {label:<14} {timings[label]:7.1f} faces/s ({counts.unlabeled_computed} faces)")
    print(f"MobileFaceNet / dlib embedding speed: {timings['mobilefacenet'] / timings['dlib']:.1f}x")


if __name__ == "__main__":
    main()
