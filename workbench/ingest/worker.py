"""Per-file work, run in worker processes: bytes in, manifest facts and crop files out."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from workbench.faces.align import CROP_SIZE, align_face
from workbench.faces.context import aligned_context, context_thumbnail
from workbench.faces.detectors import DetectorSpec, get_detector
from workbench.faces.quality import face_quality
from workbench.formats.files import read_regular_file
from workbench.formats.walk import is_uri, read_uri
from workbench.ingest.decode import Decoded, Rejected, decode_image
from workbench.ingest.hashing import phash64_pair, sha256_hex

JPEG_QUALITY = 95
TMP_DIR = "tmp"  # partial writes of a killed run; emptied when the next ingest starts


@dataclass(frozen=True)
class IngestOptions:
    root: str  # workspace root: crops are written under it
    aligned: bool = False
    detector: DetectorSpec | None = None  # None: dlib with its defaults
    max_pixels: int = 50_000_000
    max_file_bytes: int = 256 << 20


@dataclass
class FaceResult:
    face_id: str
    face_index: int
    crop_rel: str
    det_score: float | None
    bbox: list[float] | None
    landmarks: list[float] | None
    face_size: float | None
    blur: float
    brightness: float
    quality: float
    crop_phash: int
    crop_phash_mirror: int
    context: bytes  # `faces.context.context_thumbnail`: the photo around the face, in its frame


@dataclass
class FileResult:
    path: str
    size: int
    mtime_ns: int
    image_id: str | None = None
    status: str = "rejected"
    reason: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    phash: int | None = None
    phash_mirror: int | None = None
    faces: list[FaceResult] = field(default_factory=list)


def face_id_for(image_id: str, index: int) -> str:
    """Stable id of the index-th face of an image (128 bits of sha256)."""
    return hashlib.sha256(f"{image_id}:{index}".encode()).hexdigest()[:32]


def crop_relpath(face_id: str, ext: str) -> str:
    """Content-addressed crop location, relative to the workspace root (256-way fan-out)."""
    return f"crops/{face_id[:2]}/{face_id}{ext}"


_made_dirs: set[str] = set()


def _ensure_dir(path: str) -> None:
    if path not in _made_dirs:
        os.makedirs(path, exist_ok=True)
        _made_dirs.add(path)


def write_atomic(root: str, rel: str, data: bytes) -> None:
    """Write once via `root/tmp`: readers never see a partial file; existing crops are kept."""
    path = os.path.join(root, rel)
    if os.path.exists(path):
        return
    tmp_dir = os.path.join(root, TMP_DIR)
    _ensure_dir(tmp_dir)
    _ensure_dir(os.path.dirname(path))
    tmp = os.path.join(tmp_dir, f"{os.path.basename(path)}.{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
    except OSError as exc:  # a full disk, say: leave no partial file, and name the one it was
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OSError(exc.errno, exc.strerror, path) from None
    os.replace(tmp, path)


def process_file(path: str, size: int, mtime_ns: int, options: IngestOptions) -> FileResult:
    """Read, hash, decode, find faces, write crops; never raises for bad input."""
    result = FileResult(path=path, size=size, mtime_ns=mtime_ns)
    try:
        data = read_uri(path, options.max_file_bytes) if is_uri(path) else \
            read_regular_file(path, options.max_file_bytes)
    except OSError as exc:
        result.reason = f"unreadable: {exc.strerror or exc}"
        return result
    except ValueError as exc:
        result.reason = str(exc)
        return result
    return process_bytes(data, result, options)


def process_bytes(data: bytes, result: FileResult, options: IngestOptions) -> FileResult:
    """Fill `result` from encoded image bytes (a file, a record, a dataset row)."""
    result.image_id = sha256_hex(data)
    try:
        decoded = decode_image(data, max_pixels=options.max_pixels)
    except Rejected as exc:
        result.reason = str(exc)
        return result
    result.height, result.width = decoded.rgb.shape[:2]
    result.format = decoded.format
    gray = cv2.cvtColor(decoded.rgb, cv2.COLOR_RGB2GRAY)
    result.phash, result.phash_mirror = phash64_pair(gray)
    if options.aligned:
        if result.width != result.height:
            result.reason = f"not an aligned crop ({result.width}x{result.height})"
            return result
        result.faces = [_aligned_face(result.image_id, data, decoded, gray, options)]
    else:
        result.faces = _detected_faces(result.image_id, decoded.rgb, gray, options)
    result.status, result.reason = ("ok", None) if result.faces else ("rejected", "no face")
    return result


def _aligned_face(
    image_id: str, data: bytes, decoded: Decoded, gray: np.ndarray, options: IngestOptions
) -> FaceResult:
    rgb = decoded.rgb
    if rgb.shape[:2] != (CROP_SIZE, CROP_SIZE):
        rgb = cv2.resize(rgb, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    face_id = face_id_for(image_id, 0)
    # Original bytes keep the labeled pixels exact; anything else is stored lossless.
    if decoded.format in ("JPEG", "PNG") and not decoded.transposed and rgb is decoded.rgb:
        ext, payload = (".jpg" if decoded.format == "JPEG" else ".png"), data
    else:
        ext, payload = ".png", _encode(rgb, ".png")
    rel = crop_relpath(face_id, ext)
    write_atomic(options.root, rel, payload)
    quality = face_quality(gray, None)
    return FaceResult(face_id, 0, rel, None, None, None, quality.face_size, quality.blur,
                      quality.brightness, quality.score, *phash64_pair(gray),
                      aligned_context(gray).tobytes())


def _detected_faces(image_id: str, rgb: np.ndarray, photo_gray: np.ndarray,
                    options: IngestOptions) -> list[FaceResult]:
    detector = get_detector(options.detector or DetectorSpec.parse("dlib"))
    faces = []
    for index, det in enumerate(detector.detect(rgb)):
        crop = align_face(rgb, det.landmarks)
        face_id = face_id_for(image_id, index)
        rel = crop_relpath(face_id, ".jpg")
        write_atomic(options.root, rel, _encode(crop, ".jpg"))
        gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
        quality = face_quality(gray, det.landmarks)
        faces.append(
            FaceResult(face_id, index, rel, det.score, det.bbox.round(2).tolist(),
                       det.landmarks.round(2).ravel().tolist(), quality.face_size,
                       quality.blur, quality.brightness, quality.score, *phash64_pair(gray),
                       context_thumbnail(photo_gray, det.landmarks).tobytes())
        )
    return faces


def _encode(rgb: np.ndarray, ext: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"could not encode crop as {ext}")
    return buf.tobytes()
