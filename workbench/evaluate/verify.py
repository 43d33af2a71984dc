"""`wb eval --model M --pairs FILE`: any model's verification accuracy on a standard protocol.

Users compare recognisers on the public verification sets before curating with
one. Pairs come from an InsightFace `.bin` (aligned crops) or a `pairs.txt`
protocol over a folder of photos, which are detected and aligned here exactly
as ingest does it (same detector, same 5-point ArcFace alignment), so the
figure is the pipeline's, not only the model's. In a protocol's photos the
person named is the face nearest the image centre (LFW's photos are centred on
them); a photo where no face is found scores -1 with every partner, so it
counts against the pipeline rather than being dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.embed.models import ModelSpec, embed_crops
from workbench.errors import WorkbenchError
from workbench.evaluate import metrics as m
from workbench.faces.detect import aligned_centre_face
from workbench.faces.detectors import DetectorSpec, get_detector
from workbench.formats.binpairs import read_bin
from workbench.formats.files import read_regular_file
from workbench.formats.images import decode_crops
from workbench.formats.pairs_txt import read_pairs_txt
from workbench.ingest.decode import Rejected, decode_image
from workbench.results import Result

MAX_IMAGE_BYTES = 64 << 20


@dataclass
class VerifyResult(Result):
    """Verification of one model (and, for photos, one detector) on one protocol."""

    model: str
    detector: str | None
    pairs: str
    n_pairs: int
    pairs_listed: int
    missing_images: int
    no_face: int  # photos where the detector found nobody
    flip: bool
    accuracy: float
    accuracy_std: float
    threshold: float
    tar_at_far_1e3: float | None  # TAR at FAR 1e-3
    tar_at_far_1e4: float | None  # TAR at FAR 1e-4


def photo_crops(paths: list[Path], detector: DetectorSpec,
                progress: Callable[[int, int | None], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, 112, 112, 3) aligned crops of each photo's centre face and a mask of photos with one."""
    det = get_detector(detector)
    crops = np.zeros((len(paths), 112, 112, 3), np.uint8)
    found = np.zeros(len(paths), bool)
    for i, path in enumerate(paths):
        try:
            rgb = decode_image(read_regular_file(path, MAX_IMAGE_BYTES)).rgb
        except (OSError, ValueError, Rejected) as exc:
            raise WorkbenchError(f"cannot read {path}: {exc}") from None
        crop = aligned_centre_face(rgb, det.detect)
        if crop is not None:
            crops[i], found[i] = crop, True
        if progress:
            progress(i + 1, len(paths))
    return crops, found


def bin_protocol(pairs_file: Path) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """An InsightFace `.bin` as (encoded crops, pair i being 2i and 2i+1; same-person flags; the
    10 folds in file order, as InsightFace's evaluation cuts them)."""
    pairs = read_bin(pairs_file)
    if any(not isinstance(img, bytes) for img in pairs.images):
        raise WorkbenchError(f"{pairs_file}: decoded-array .bin files are not supported yet")
    n = len(pairs.issame)
    return list(pairs.images), np.asarray(pairs.issame, bool), np.arange(n) * 10 // n


@dataclass
class ProtocolCrops:
    """A protocol's aligned faces, each once, and its pairs as indices into them."""

    crops: np.ndarray  # (n, 112, 112, 3)
    found: np.ndarray  # (n,) bool: a face was found (always, for a .bin)
    a: np.ndarray
    b: np.ndarray
    issame: np.ndarray
    folds: np.ndarray
    listed: int
    missing_images: int
    detector: str | None


def protocol_crops(pairs_file: Path, *, images: Path | None = None, detector: DetectorSpec | None = None,
                   progress: Callable[[int, int | None], None] | None = None) -> ProtocolCrops:
    """The faces of a `.bin` (aligned already) or of a pairs.txt's photos (detected and aligned)."""
    if pairs_file.suffix == ".bin":
        encoded, issame, folds = bin_protocol(pairs_file)
        n = len(issame)
        return ProtocolCrops(decode_crops(encoded), np.ones(2 * n, bool), np.arange(0, 2 * n, 2),
                             np.arange(1, 2 * n, 2), issame, folds, n, 0, None)
    if images is None or detector is None:
        raise WorkbenchError("a pairs.txt protocol needs --images (the photos' folder) and a detector")
    plist = read_pairs_txt(pairs_file, images)
    files = plist.files
    crops, found = photo_crops(files, detector, progress)
    index = {p: i for i, p in enumerate(files)}
    return ProtocolCrops(crops, found, np.array([index[p] for p in plist.left]),
                         np.array([index[p] for p in plist.right]), plist.issame, plist.folds,
                         plist.listed, plist.missing_images, detector.key)


def verify_crops(model: ModelSpec, faces: ProtocolCrops, pairs: str) -> VerifyResult:
    """10-fold verification accuracy (the protocol's folds) and TAR at low FAR of `model`."""
    emb = embed_crops(model, faces.crops)
    a, b = faces.a, faces.b
    scores = np.where(faces.found[a] & faces.found[b], np.einsum("nd,nd->n", emb[a], emb[b]), -1.0)
    acc, std, threshold = m.verification_accuracy(scores, faces.issame, faces.folds)
    genuine, impostor = scores[faces.issame], scores[~faces.issame]
    return VerifyResult(model.key, faces.detector, pairs, len(scores), faces.listed, faces.missing_images,
                        int((~faces.found).sum()), model.flip, acc, std, threshold,
                        m.tar_at_far(genuine, impostor, 1e-3), m.tar_at_far(genuine, impostor, 1e-4))


def verify_model(model: ModelSpec, pairs_file: Path, *, images: Path | None = None,
                 detector: DetectorSpec | None = None,
                 progress: Callable[[int, int | None], None] | None = None) -> VerifyResult:
    """`model` on a `.bin` or a pairs.txt protocol (see the module's docstring)."""
    faces = protocol_crops(pairs_file, images=images, detector=detector, progress=progress)
    return verify_crops(model, faces, str(pairs_file))
