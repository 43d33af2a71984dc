"""LFW's standard verification protocol through the workbench's own detection, alignment and embedding.

    python benchmarks/lfw_protocol.py [--pairs ../shared/data/lfw_pairs.txt]
        [--images ../shared/data/lfw150] [--detectors dlib,yunet,scrfd] [--models mobilefacenet]

Reads LFW's `pairs.txt` (View 2: 10 folds of 300 + 300 pairs) and runs it on the
pairs whose two photos are in `--images` (printed: how many). Each detector
finds and aligns every photo once (`wb eval --model` does the same per call);
each model then embeds the crops with and without flip. Printed per row:
10-fold accuracy +- std, errors (pairs wrong at the protocol's thresholds),
and the detector's images/s. The figures to compare: SCRFD's row against the
model's reported LFW accuracy, and YuNet's against SCRFD's.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from workbench.embed.models import ModelSpec
from workbench.evaluate.verify import protocol_crops, verify_crops
from workbench.faces.detectors import DetectorSpec

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS = SHARED / "models"
DETECTORS = {"dlib": "dlib", "yunet": "yunet", "yunet-n": f"yunet:{MODELS / 'yunet_n_640_640.onnx'}",
             "scrfd": f"scrfd:{MODELS / 'scrfd_2.5g_kps.onnx'}",
             "scrfd-500m": f"scrfd:{MODELS / 'scrfd_500m_kps.onnx'}"}
RECOGNISERS = {"mobilefacenet": f"onnx:{MODELS / 'mobilefacenet_128d.onnx'}", "dlib": "dlib"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=SHARED / "data" / "lfw_pairs.txt")
    parser.add_argument("--images", type=Path, default=SHARED / "data" / "lfw150")
    parser.add_argument("--detectors", default="dlib,yunet,scrfd",
                        help=f"comma-separated, of {', '.join(DETECTORS)} or any --detector text")
    parser.add_argument("--models", default="mobilefacenet",
                        help=f"comma-separated, of {', '.join(RECOGNISERS)} or any --model text")
    args = parser.parse_args()
    print(f"{'detector':<11} {'model':<14} {'flip':<5} {'pairs':>6} {'accuracy':>16} {'errors':>6} "
          f"{'no face':>7} {'det img/s':>9}")
    for det_name in args.detectors.split(","):
        detector = DetectorSpec.parse(DETECTORS.get(det_name, det_name))
        start = time.perf_counter()
        faces = protocol_crops(args.pairs, images=args.images, detector=detector)
        rate = len(faces.crops) / (time.perf_counter() - start)
        for model_name in args.models.split(","):
            spec = ModelSpec.parse(RECOGNISERS.get(model_name, model_name))
            for flip in (True, False):
                r = verify_crops(replace(spec, flip=flip), faces, str(args.pairs))
                errors = round((1 - r.accuracy) * r.n_pairs)
                print(f"{det_name:<11} {model_name:<14} {flip!s:<5} {r.n_pairs:>6} "
                      f"{100 * r.accuracy:>8.2f}% +- {100 * r.accuracy_std:.2f} {errors:>6} "
                      f"{r.no_face:>7} {rate:>9.1f}", flush=True)
    print(f"pairs with both photos present: {r.n_pairs} of {r.pairs_listed} "
          f"({r.missing_images} photos named by the protocol are not in {args.images})")


if __name__ == "__main__":
    main()
