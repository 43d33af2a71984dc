"""Curation quality with a given detector and model, run as a user would, against planted truth.

    python benchmarks/curation_models.py --scenario lfw|celeba \
        [--detector yunet:../shared/models/yunet_s_640_640.onnx] \
        [--model onnx:../shared/models/mobilefacenet_128d.onnx] [--work /tmp/curation]

Scenarios (both read ../shared/data, or the folders given):
- `lfw`: benchmarks/lfw_scenario.py: identities with >= 4 images are labeled (60% of
  their photos), the rest of their photos are planted among unknown people's, 10%
  of web images get near-duplicate copies.
- `celeba`: S = celeba200 (identity folders), U = celeba10k/images with
  labels.csv; web faces of S's identities are downscaled copies of S's photos;
  10% of web images get a near-duplicate copy as in lfw (small faces: 89x109
  photos rescaled to 0.6-0.9).
Prints the calibration, then: the share of known people's faces excluded
(copy, overlap or ambiguous), the share of unknown people's faces excluded
(both over the original photos), the same for the planted copies of known
people's photos, how many known people's faces `wb split` (defaults) still
leaves in train_unlabeled or eval_unknown, near-duplicate recall, distinct
same-person photos merged, and duplicate groups that mix people.
Evaluation uses each image's primary face; images without a face are listed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import duckdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lfw_scenario import DEFAULT_LFW, build, near_duplicate

from workbench.curate.dedupe import run_dedupe
from workbench.curate.overlap import run_overlap
from workbench.curate.splits import run_split
from workbench.embed.models import ModelSpec
from workbench.ingest.pipeline import run_ingest
from workbench.labeled.register import register_labeled
from workbench.manifest.workspace import Workspace

SHARED = Path(__file__).resolve().parents[2] / "shared"


def scenario(name: str, work: Path) -> tuple[Path, Path, dict[str, dict]]:
    """(labeled folder, web folder, truth: web file name -> {identity, known, dup_of})."""
    if name == "lfw":
        built = build(DEFAULT_LFW, work / "scenario")
        return built.labeled, built.web, built.truth
    labeled, images = SHARED / "data" / "celeba200", SHARED / "data" / "celeba10k" / "images"
    web, truth_file = work / "scenario" / "web", work / "scenario" / "truth.json"
    if truth_file.exists():
        return labeled, web, json.loads(truth_file.read_text())
    known = {p.name for p in labeled.iterdir() if p.is_dir()}
    with open(SHARED / "data" / "celeba10k" / "labels.csv") as handle:
        truth = {row["file"]: {"identity": row["identity"], "known": row["identity"] in known,
                               "dup_of": None} for row in csv.DictReader(handle)}
    web.mkdir(parents=True, exist_ok=True)
    for name in truth:
        (web / name).symlink_to(images / name)
    rng = np.random.default_rng(0)
    for name in rng.choice(sorted(truth), size=len(truth) // 10, replace=False):
        near_duplicate(images / name, web / f"dup0_{name}", rng)
        truth[f"dup0_{name}"] = {**truth[name], "dup_of": name}
    truth_file.write_text(json.dumps(truth, indent=1))
    return labeled, web, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["lfw", "celeba"], default="lfw")
    parser.add_argument("--detector", default=f"yunet:{SHARED / 'models' / 'yunet_s_640_640.onnx'}")
    parser.add_argument("--model", default=f"onnx:{SHARED / 'models' / 'mobilefacenet_128d.onnx'}")
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("/tmp/curation_models"))
    args = parser.parse_args()
    work = args.work / args.scenario
    labeled, web, truth = scenario(args.scenario, work)
    ws = Workspace.at(work / f"ws-{args.detector.split(':')[0]}-{args.model.split(':')[0]}")
    spec = ModelSpec.parse(args.model, flip=args.flip)
    start = time.perf_counter()
    register_labeled(ws, "S", labeled, fmt="folder", aligned=False, detector=args.detector)
    run_ingest(ws, web, source="web", detector=args.detector)
    overlap = run_overlap(ws, "S", model=spec)
    dedupe = run_dedupe(ws, model=spec, labeled_set="S")
    split = run_split(ws)
    print(f"workbench time (register, ingest, overlap, dedupe, split): {time.perf_counter() - start:.0f} s")
    print("overlap calibration:", json.dumps(overlap.calibration, indent=1, default=float))
    print("dedupe calibration:", json.dumps(dedupe.calibration, indent=1, default=float))

    con = duckdb.connect(str(ws.manifest_path), read_only=True)
    rows = con.execute("""
        SELECT regexp_extract(i.path, '[^/]+$') AS name, o.decision, d.group_id
        FROM wb_images i LEFT JOIN wb_faces f ON f.image_id = i.image_id AND f.is_primary
        LEFT JOIN overlap o USING (face_id) LEFT JOIN dups d USING (face_id)
        WHERE i.source = 'web'""").fetchall()
    found = [(n, dec, g) for n, dec, g in rows if dec is not None and n in truth]
    known = np.array([truth[n]["known"] for n, _, _ in found])
    planted_copy = np.array([truth[n]["dup_of"] is not None for n, _, _ in found])
    decision = np.array([dec for _, dec, _ in found])
    excluded = decision != "clean"
    print(f"\nweb images: {len(rows)}, with a face: {len(found)} ({known.sum()} of known people, "
          f"{planted_copy.sum()} planted copies)")
    for label, mask in (("known", known & ~planted_copy), ("unknown", ~known & ~planted_copy),
                        ("copies of known", known & planted_copy)):
        counts = {d: int((decision[mask] == d).sum()) for d in ("copy", "overlap", "ambiguous", "clean")}
        print(f"{label:>15} people's faces excluded: {excluded[mask].mean():.4f} of {mask.sum()}  {counts}")

    kept = {name for (name,) in con.execute("""
        SELECT regexp_extract(i.path, '[^/]+$') FROM wb_splits s JOIN wb_images i USING (image_id)
        WHERE i.source = 'web' AND s.split <> 'excluded'""").fetchall()}
    known_kept = sum(1 for n in kept if n in truth and truth[n]["known"])
    print(f"split {split.splits}: faces of known people left in train_unlabeled or eval_unknown: "
          f"{known_kept} of {known.sum()} (planted copies included)")

    by_name = {n: g for n, _, g in found}
    copies = [(n, t["dup_of"]) for n, t in truth.items()
              if t["dup_of"] and n in by_name and t["dup_of"] in by_name]
    if copies:
        recall = np.mean([by_name[c] == by_name[o] for c, o in copies])
        by_person: dict[str, list[str]] = {}
        for n in by_name:
            if truth[n]["dup_of"] is None:
                by_person.setdefault(truth[n]["identity"], []).append(n)
        groups = [g for g in by_person.values() if len(g) > 1]
        merged = sum(1 for g in groups for n in g if sum(by_name[m] == by_name[n] for m in g) > 1)
        eligible = sum(len(g) for g in groups)
        print(f"near-duplicate recall: {recall:.3f} ({len(copies)} copies); distinct photos of one "
              f"person merged: {merged / max(eligible, 1):.4f} ({merged} of {eligible})")
    members: dict[object, list[str]] = {}
    for n, g in by_name.items():
        members.setdefault(g, []).append(n)
    mixed = [g for g in members.values() if len({truth[n]["identity"] for n in g}) > 1]
    print(f"duplicate groups that mix people: {len(mixed)}, holding {sum(map(len, mixed))} faces "
          f"(largest {max(map(len, mixed), default=0)})")


if __name__ == "__main__":
    main()
