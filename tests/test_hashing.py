import io

import cv2
import numpy as np
from PIL import Image
from scipy.fft import dctn

from tests.conftest import noise_image
from workbench.ingest.hashing import hamming, phash64, phash64_pair, sha256_hex


def test_sha256_known_vector():
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_phash_matches_an_independent_scipy_dct():
    for seed in range(3, 13):
        rgb = np.asarray(noise_image(seed, (150, 110 + 7 * seed)))
        small = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
        low = dctn(small.astype(float), type=2)[:8, :8]
        expected = int("".join("1" if v else "0" for v in (low > np.median(low)).ravel()), 2)
        assert phash64(rgb) == expected


def test_phash_survives_resize_and_jpeg_but_separates_different_images():
    original = noise_image(7, (200, 200))
    buf = io.BytesIO()
    original.resize((130, 130)).save(buf, format="JPEG", quality=50)
    degraded = Image.open(buf).convert("RGB")
    a, b = phash64(np.asarray(original)), phash64(np.asarray(degraded))
    other = phash64(np.asarray(noise_image(8, (200, 200))))
    assert hamming(a, b) <= 6
    assert hamming(a, other) >= 16


def test_hamming():
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(2**64 - 1, 0) == 64


def test_the_mirrored_hash_is_the_hash_of_the_mirrored_image():
    for seed in range(20):
        rgb = np.asarray(noise_image(seed, (150 + seed, 120)))
        plain, mirrored = phash64_pair(rgb)
        assert plain == phash64(rgb)
        assert mirrored == phash64(np.ascontiguousarray(rgb[:, ::-1]))
    assert hamming(*phash64_pair(rgb)) >= 8  # an asymmetric image is far from its mirror
