"""Content hashes: sha256 for identity of bytes, DCT perceptual hash for near-duplicates."""

from __future__ import annotations

import hashlib

import imagehash
import numpy as np
from PIL import Image


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def phash64(rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash (imagehash.phash) as an unsigned integer."""
    bits = imagehash.phash(Image.fromarray(rgb)).hash.flatten()
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
