"""Every kind of bad or unusual input decodes to RGB or is rejected with a reason."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import noise_image
from workbench.ingest.decode import Rejected, decode_image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def reason(data: bytes) -> str:
    with pytest.raises(Rejected) as info:
        decode_image(data)
    return str(info.value)


def test_empty_file():
    assert reason(b"") == "empty file"


def test_text_pretending_to_be_jpeg():
    assert reason(b"<html>not an image</html>" * 10) == "not an image"


def test_truncated_jpeg():
    data = encode(noise_image(1, (300, 300)), "JPEG", quality=90)
    assert reason(data[: len(data) // 2]) == "truncated or corrupt image"


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("1", (8000, 8000)), "PNG")
    assert len(bomb) < 100_000
    assert reason(bomb).startswith("decompression bomb")


def test_one_pixel_image():
    assert reason(encode(Image.new("RGB", (1, 1)), "PNG")) == "too small (1x1)"


def test_unsupported_format():
    assert reason(encode(noise_image(2), "PPM")) == "unsupported format PPM"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_accepted_formats_decode_to_rgb(fmt):
    decoded = decode_image(encode(noise_image(3, (64, 48)), fmt))
    assert decoded.rgb.shape == (48, 64, 3) and decoded.rgb.dtype == np.uint8
    assert decoded.format == fmt


def test_grayscale_becomes_three_equal_channels():
    gray = Image.fromarray(np.full((32, 32), 77, np.uint8), "L")
    rgb = decode_image(encode(gray, "PNG")).rgb
    assert (rgb == 77).all()


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # pure red in CMYK
    rgb = decode_image(encode(cmyk, "JPEG", quality=95)).rgb
    assert rgb[..., 0].mean() > 200 and rgb[..., 1].mean() < 50


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.tile(np.array([0, 100 * 256, 65535, 200 * 256], np.uint16), (20, 5))
    image = Image.fromarray(values)
    assert image.mode.startswith("I")
    rgb = decode_image(encode(image, "PNG")).rgb
    np.testing.assert_array_equal(rgb[0, :4, 0], [0, 100, 255, 200])


def test_palette_image():
    rgb = decode_image(encode(noise_image(4).convert("P"), "PNG")).rgb
    assert rgb.shape == (112, 112, 3)


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 10, 20))
    rgb = decode_image(encode(rgba, "PNG")).rgb
    assert tuple(rgb[5, 2]) == (255, 0, 0) and tuple(rgb[5, 15]) == (255, 255, 255)


def test_gif_first_frame():
    frames = [Image.new("RGB", (30, 30), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    rgb = decode_image(data).rgb
    assert rgb[..., 0].mean() > 200 and rgb[..., 2].mean() < 50


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encode(image, "JPEG", exif=exif))
    assert decoded.rgb.shape[:2] == (40, 20) and decoded.transposed
