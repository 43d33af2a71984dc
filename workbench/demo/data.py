"""The demo's data on disk, with the truth planted in it.

- `labeled/train.rec` (+ `.idx`, `property`): the labeled set S as InsightFace
  RecordIO, the way MS1MV2 ships.
- `webfaces/`: aligned web faces of people not in S, plus planted overlaps
  (new photos of people in S), near-duplicates (re-encoded copies) and junk
  files (empty, truncated, not an image, 1x1).
- `scenes/`: larger pictures with one face somewhere, for the detection path.
- `truth.json`: which file is which.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from workbench.demo.faces import render_face, render_scene
from workbench.formats.recordio import write_insightface_rec

UNKNOWN_BASE = 100_000  # identity numbers of people not in S start here


@dataclass(frozen=True)
class DemoSize:
    labeled_identities: int = 250  # many identities, few photos each, as in MS1MV2
    labeled_per_identity: int = 5
    unknown_identities: int = 30
    unknown_per_identity: int = 6
    overlap_identities: int = 10
    overlap_per_identity: int = 3
    near_duplicates: int = 20
    scenes: int = 12


def jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_demo_data(root: Path, size: DemoSize = DemoSize(), seed: int = 0) -> dict[str, Any]:
    """Generate every file under `root`; returns (and writes) the planted truth."""
    root.mkdir(parents=True, exist_ok=True)
    samples = ((ident, jpeg(render_face(seed, ident, k)[0]))
               for ident in range(size.labeled_identities) for k in range(size.labeled_per_identity))
    write_insightface_rec(root / "labeled" / "train.rec", samples, num_classes=size.labeled_identities)

    web = root / "webfaces"
    web.mkdir(exist_ok=True)
    files: dict[str, dict[str, Any]] = {}

    def put(name: str, data: bytes, kind: str, identity: int | None) -> None:
        (web / name).write_bytes(data)
        files[f"webfaces/{name}"] = {"kind": kind, "identity": identity}

    for u in range(size.unknown_identities):
        ident = UNKNOWN_BASE + u
        for k in range(size.unknown_per_identity):
            put(f"unknown_{u:03d}_{k}.jpg", jpeg(render_face(seed, ident, k)[0]), "unknown", ident)
    for ident in range(size.overlap_identities):
        for k in range(size.overlap_per_identity):
            image = size.labeled_per_identity + 100 + k  # photos S does not contain
            put(f"known_{ident:03d}_{k}.jpg", jpeg(render_face(seed, ident, image)[0]), "overlap", ident)
    rng = np.random.default_rng([seed, 7])
    unknown_names = sorted(n for n in files if files[n]["kind"] == "unknown")
    for j, name in enumerate(rng.choice(unknown_names, size.near_duplicates, replace=False)):
        original = np.asarray(Image.open(root / name).convert("RGB"), np.float32)
        brighter = np.clip(original * rng.uniform(0.9, 1.1), 0, 255).astype(np.uint8)
        put(f"copy_{j:03d}.jpg", jpeg(brighter, quality=int(rng.integers(60, 85))), "near_duplicate",
            files[name]["identity"])
        files[f"webfaces/copy_{j:03d}.jpg"]["original"] = name
    good = jpeg(render_face(seed, UNKNOWN_BASE + 999, 0)[0])
    put("junk_empty.jpg", b"", "junk", None)
    put("junk_truncated.jpg", good[: len(good) // 3], "junk", None)
    put("junk_text.jpg", b"<html>not an image</html>\n", "junk", None)
    tiny = io.BytesIO()
    Image.new("RGB", (1, 1), (128, 64, 32)).save(tiny, "PNG")
    put("junk_1x1.png", tiny.getvalue(), "junk", None)

    scenes = root / "scenes"
    scenes.mkdir(exist_ok=True)
    for s in range(size.scenes):
        ident = UNKNOWN_BASE + size.unknown_identities + s
        picture, landmarks = render_scene(seed, ident, 0)
        (scenes / f"scene_{s:03d}.jpg").write_bytes(jpeg(picture))
        files[f"scenes/scene_{s:03d}.jpg"] = {"kind": "scene", "identity": ident,
                                               "landmarks": landmarks.round(2).tolist()}
    truth = {"seed": seed, "size": asdict(size), "files": files}
    (root / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth
