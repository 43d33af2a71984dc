"""Synthetic web copies of a face photo, for calibrating duplicate detection.

A photo copied around the web is re-encoded, rescaled, cropped or reframed,
brightened, rotated a little, mirrored or captioned, then found and aligned
again by the detector. That re-detection moves the five landmarks by a pixel
or two, and it is most of what separates a copy's crop from the original's,
so copies are made the way they happen: the labeled photo the face was found in
(or, for a set of aligned crops, the crop set in a photo-like canvas, its border
mirrored outwards by `PAD` px) and its edited copy both go through the real
detector and alignment, and the two crops are compared; where the detector
cannot find the face at all (drawings, generated test faces), the edit is
applied to the crop itself and simulated re-alignment error stands in. The
photo matters: a copy shares the original's surroundings only as far as the
photo has any, and a crop's mirrored border has almost none (celeba200 with
YuNet-s and MobileFaceNet: the calibration's recall 0.77 with copies made from
its crops, 0.98 made from its photos, real reframed web copies found at
0.978). (For crops, a wider canvas with a replicated border moved YuNet's
landmarks more than the edits did: cropped copies' 5th-percentile cosine 0.77
against 0.93 with the mirrored one, MobileFaceNet on celeba200.) Each copy
carries the name of its transformation, so a calibration reports recall per
transformation and a miss has a name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from workbench.faces.align import CROP_SIZE, align_face
from workbench.faces.context import aligned_context, context_thumbnail
from workbench.faces.detect import Detection, nearest_centre

PAD = 16  # border added around a 112 px crop to make it a photo
TRANSFORMS = ("reencode", "rescale", "crop", "tone", "rotate", "mirror", "overlay", "mixed")


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    _, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _rescale(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = rgb.shape[:2]
    s = rng.uniform(0.6, 0.9)
    return cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)


def _crop(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to 8% of the width and height cut away, unevenly (a reframing)."""
    h, w = rgb.shape[:2]
    cut = rng.uniform(0.02, 0.08, size=2)
    left, top = rng.uniform(0, 1, size=2) * cut
    x0, y0 = int(left * w), int(top * h)
    return rgb[y0 : h - int((cut[1] - top) * h), x0 : w - int((cut[0] - left) * w)].copy()


def _tone(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = rgb.astype(np.float32) * rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, size=3)
    return np.clip(out, 0, 255).astype(np.uint8)


def _rotate(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-5, 5), 1.0)
    return cv2.warpAffine(rgb, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _overlay(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A caption or watermark across the lower part of the photo."""
    out = rgb.copy()
    h, w = out.shape[:2]
    text = "".join(rng.choice(list("ABCDEFGHJKLMNPRSTUVWXYZ0123456789."), size=int(rng.integers(6, 12))))
    colour = (255, 255, 255) if rng.random() < 0.7 else (0, 0, 0)
    cv2.putText(out, text, (int(rng.integers(2, max(3, w // 5))), int(h * rng.uniform(0.82, 0.97))),
                cv2.FONT_HERSHEY_SIMPLEX, w / 440, colour, 1, cv2.LINE_AA)  # text ~1/3 of the width
    return out


EDITS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "rescale": _rescale, "crop": _crop, "tone": _tone, "rotate": _rotate,
    "mirror": lambda rgb, rng: rgb[:, ::-1].copy(), "overlay": _overlay,
}


def edit_photo(rgb: np.ndarray, transform: str, rng: np.random.Generator) -> np.ndarray:
    """One web copy of a photo: the named transformation, then re-encoded as JPEG (quality 40-80
    for `reencode` and `mixed`, 75-95 otherwise). `mixed` is the commonest copy of all, a photo
    reframed, rescaled and brightened and saved at low quality at once, plus a rotation, a mirror
    or a caption in half of them."""
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transformation {transform!r}: one of {', '.join(TRANSFORMS)}")
    names = [transform] if transform in EDITS else []
    if transform == "mixed":
        others = ("rotate", "mirror", "overlay", None, None, None)
        names = ["crop", "rescale", "tone", *[n for n in [others[int(rng.integers(len(others)))]] if n]]
    out = rgb
    for name in names:
        out = EDITS[name](out, rng)
    quality = int(rng.integers(40, 81)) if transform in ("reencode", "mixed") else int(rng.integers(75, 96))
    return _jpeg(out, quality)


def as_photo(crop: np.ndarray) -> np.ndarray:
    """An aligned crop set in a photo `PAD` px wider on each side, its border mirrored outwards."""
    return cv2.copyMakeBorder(crop, PAD, PAD, PAD, PAD, cv2.BORDER_REFLECT_101)


def _rejitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Back to a 112 px crop with the few pixels of re-alignment error a detector would add."""
    rgb = cv2.resize(rgb, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
    centre = (CROP_SIZE / 2, CROP_SIZE / 2)
    matrix = cv2.getRotationMatrix2D(centre, rng.uniform(-3, 3), rng.uniform(0.97, 1.03))
    matrix[:, 2] += rng.uniform(-2.5, 2.5, size=2)
    return cv2.warpAffine(rgb, matrix, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


@dataclass(frozen=True)
class CopyPair:
    """A face and its web copy: both aligned crops, the whole photos they were aligned from
    (`wb dedupe` compares the photos' hashes besides the crops'), and both context thumbnails."""

    original: np.ndarray
    copy: np.ndarray
    photos: tuple[np.ndarray, np.ndarray]
    refound: bool  # both re-detected by the detector (else simulated re-alignment)
    contexts: tuple[np.ndarray, np.ndarray]


def _found(rgb: np.ndarray, detect: Callable[[np.ndarray], list[Detection]]
           ) -> tuple[np.ndarray, np.ndarray] | None:
    """The photo's centre face as `wb ingest` keeps it: aligned crop and context thumbnail."""
    face = nearest_centre(detect(rgb), *rgb.shape[:2])
    if face is None:
        return None
    return align_face(rgb, face.landmarks), context_thumbnail(_gray(rgb), face.landmarks)


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def copy_pair(crop: np.ndarray, transform: str, rng: np.random.Generator,
              detect: Callable[[np.ndarray], list[Detection]], photo: np.ndarray | None = None
              ) -> CopyPair:
    """A copy of `photo` (by default the crop set in a photo, `as_photo`): both re-detected and
    aligned from their photos (refound), or, where the detector misses either (faces it cannot
    see: drawings, generated test faces), the crop and its edited copy brought back to the
    crop's frame with simulated re-alignment error."""
    photo = as_photo(crop) if photo is None else photo
    edited = edit_photo(photo, transform, rng)
    original, copy = _found(photo, detect), _found(edited, detect)
    if original is not None and copy is not None:
        return CopyPair(original[0], copy[0], (photo, edited), True, (original[1], copy[1]))
    edited = edit_photo(crop, transform, rng)
    moved = _rejitter(edited, rng)
    return CopyPair(crop, moved, (crop, edited), False,
                    (aligned_context(_gray(crop)), aligned_context(_gray(moved))))
