"""Encoded images: cheap structural checks (for sets too large to decode at registration) and
the one decoder of aligned face crops."""

from __future__ import annotations

import cv2
import numpy as np

CROP_SIZE = 112

SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def sniff_format(data: bytes) -> str | None:
    """The image format from the magic bytes, or None."""
    for signature, name in SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def jpeg_complete(data: bytes) -> bool:
    """An end-of-image marker after the start of scan. Entropy-coded data stuffs every 0xFF
    byte, so 0xFFD9 there is the marker; bytes after it (phones append data) are allowed."""
    scan = data.find(b"\xff\xda")
    return scan >= 0 and data.find(b"\xff\xd9", scan) >= 0


def check_encoded(data: bytes) -> str | None:
    """None if the bytes look like a complete image, else the reason they do not."""
    if not data:
        return "empty image"
    fmt = sniff_format(data)
    if fmt is None:
        return "corrupt image (unknown signature)"
    if fmt == "JPEG" and not jpeg_complete(data):
        return "corrupt image (truncated JPEG)"
    if fmt == "PNG" and b"IEND" not in data[-16:]:
        return "corrupt image (truncated PNG)"
    return None


def decode_crop(data: bytes, size: int = CROP_SIZE) -> np.ndarray:
    """An encoded aligned crop as (size, size, 3) RGB uint8, resized if it was stored at another size."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("undecodable face crop")
    if bgr.shape[:2] != (size, size):
        bgr = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_crops(encoded: list[bytes], size: int = CROP_SIZE) -> np.ndarray:
    """Encoded crops as an (n, size, size, 3) RGB batch."""
    out = np.empty((len(encoded), size, size, 3), np.uint8)
    for i, data in enumerate(encoded):
        out[i] = decode_crop(data, size)
    return out
