"""The lfw150 curation scenario shared by the overlap and UIR benchmarks.

Identities with at least 4 images are known: 60% of each one's images form the
labeled set, the rest are planted among the unlabeled images. Identities with
fewer images are unknown. 10% of unlabeled images get one or two near-duplicate
copies (resized to 0.6-0.9, JPEG quality 40-80, cropped up to 8%, brightness
+-15%). Ground truth goes to `truth.json` beside the folders.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LFW = ROOT.parent / "shared" / "data" / "lfw150"


@dataclass(frozen=True)
class Scenario:
    labeled: Path  # <identity>/<image> tree (symlinks)
    web: Path  # unlabeled images: planted, unknown, and near-duplicate copies
    truth: dict[str, dict]  # web file name -> {"identity", "known", "dup_of"}


def near_duplicate(src: Path, dst: Path, rng: np.random.Generator) -> None:
    image = Image.open(src).convert("RGB")
    w, h = image.size
    crop = rng.uniform(0, 0.08)
    dx, dy = int(w * crop * rng.uniform()), int(h * crop * rng.uniform())
    image = image.crop((dx, dy, w - int(w * crop) + dx, h - int(h * crop) + dy))
    scale = rng.uniform(0.6, 0.9)
    image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))),
                         Image.Resampling.BILINEAR)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
    image.save(dst, format="JPEG", quality=int(rng.integers(40, 81)))


def build(lfw: Path, out: Path, seed: int = 0) -> Scenario:
    """Lay the scenario out under `out` (idempotent for a seed)."""
    if (out / "truth.json").exists():
        return Scenario(out / "labeled", out / "web", json.loads((out / "truth.json").read_text()))
    rng = np.random.default_rng(seed)
    labeled, web = out / "labeled", out / "web"
    web.mkdir(parents=True, exist_ok=True)
    truth: dict[str, dict] = {}
    for identity in sorted(os.listdir(lfw)):
        images = sorted((lfw / identity).iterdir())
        known = len(images) >= 4
        if known:
            order = rng.permutation(len(images))
            n_labeled = round(0.6 * len(images))
            (labeled / identity).mkdir(parents=True, exist_ok=True)
            for i in order[:n_labeled]:
                os.symlink(images[i], labeled / identity / images[i].name)
            planted = [images[i] for i in order[n_labeled:]]
        else:
            planted = images
        for image in planted:
            os.symlink(image, web / image.name)
            truth[image.name] = {"identity": identity, "known": known, "dup_of": None}
    originals = sorted(truth)
    for name in rng.choice(originals, size=len(originals) // 10, replace=False):
        for copy in range(int(rng.integers(1, 3))):
            dup = f"dup{copy}_{Path(name).stem}.jpg"
            near_duplicate(web / name, web / dup, rng)
            truth[dup] = {**truth[name], "dup_of": name}
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return Scenario(labeled, web, truth)
