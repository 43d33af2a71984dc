"""Encoded images: cheap structural checks (for sets too large to decode at registration) and
the one decoder of aligned face crops."""

from __future__ import annotations

import cv2
import numpy as np

CROP_SIZE = 112
MAX_CROP_SIDE = 1024  # an "aligned crop" larger than this is no crop (and may be a bomb)
MAX_JPEG_SCANS = 100  # libjpeg writes 10 for a progressive colour image, mozjpeg up to ~20
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame: baseline .. lossless

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


def jpeg_scans(data: bytes) -> int:
    """Start-of-scan markers: inside entropy-coded data 0xFF is always followed by 0x00 or a
    restart marker, so each 0xFFDA is one scan (and each scan is a full decoding pass)."""
    return data.count(b"\xff\xda")


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the start-of-frame header, walking the marker segments; None if absent."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in SOF_MARKERS and pos + 9 <= len(data):
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            return int.from_bytes(data[pos + 7 : pos + 9], "big"), height
        if marker == 0xDA or length < 2:
            return None
        pos += 2 + length
    return None


def image_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) read from the header of a JPEG or PNG without decoding; None otherwise."""
    if fmt == "JPEG":
        return jpeg_size(data)
    if fmt == "PNG" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def check_encoded(data: bytes, max_side: int = MAX_CROP_SIDE) -> str | None:
    """None if the bytes look like a complete aligned crop, else the reason they do not: cheap
    enough for millions of records, and bounding what decoding one of them can cost."""
    if not data:
        return "empty image"
    fmt = sniff_format(data)
    if fmt is None:
        return "corrupt image (unknown signature)"
    if fmt == "JPEG" and not jpeg_complete(data):
        return "corrupt image (truncated JPEG)"
    if fmt == "PNG" and b"IEND" not in data[-16:]:
        return "corrupt image (truncated PNG)"
    size = image_size(data, fmt)
    if size is not None and max(size) > max_side:
        return f"not an aligned crop ({size[0]}x{size[1]})"
    scans = jpeg_scans(data) if fmt == "JPEG" else 0
    if scans > MAX_JPEG_SCANS:
        return f"too many JPEG scans ({scans})"
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
