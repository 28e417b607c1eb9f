import io

import numpy as np
import pytest
from PIL import Image

from dynadapter.contract.images import ImageDecodeError, ImageTooLargeError, decode_image, preprocess
from tests.support.tiny_onnx_model import png_bytes, png_header_claiming

MAX_PIXELS = 1_000_000


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_decodes_common_formats(fmt: str) -> None:
    image = decode_image(encoded(Image.new("RGB", (12, 7), (200, 10, 10)), fmt), MAX_PIXELS)
    assert image.size == (12, 7)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"this is not an image", id="text"),
        pytest.param(png_bytes(0, (32, 32))[:-40], id="truncated-png"),
        pytest.param(png_bytes(0, (32, 32))[:60], id="png-header-only"),
        pytest.param(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", id="eps-refused"),
    ],
)
def test_undecodable_data_raises_decode_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data, MAX_PIXELS)


def test_data_of_no_image_format_says_so_without_python_internals() -> None:
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(b"not an image", MAX_PIXELS)
    assert str(raised.value) == "cannot decode image: not an image of JPEG, PNG, WEBP, GIF, BMP, TIFF, HEIF, AVIF"


def test_pixel_limit_is_checked_from_the_header() -> None:
    with pytest.raises(ImageTooLargeError, match="exceeds the limit of 1000000 pixels"):
        decode_image(png_header_claiming(100_000, 100_000), MAX_PIXELS)
    with pytest.raises(ImageTooLargeError):
        decode_image(png_bytes(0, (1001, 1000)), MAX_PIXELS)
    assert decode_image(png_bytes(0, (1000, 1000)), MAX_PIXELS).size == (1000, 1000)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (20, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), MAX_PIXELS).size == (10, 20)


def test_preprocess_resizes_scales_and_normalises() -> None:
    image = Image.new("RGB", (40, 30), (255, 0, 51))
    x = preprocess(image, size=(8, 6), mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.2), interpolation="bilinear")
    assert x.shape == (3, 8, 6) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[:, 0, 0], [1.0, -2.0, (0.2 - 0.5) / 0.2], atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_any_mode_becomes_three_channels(mode: str) -> None:
    image = Image.new("RGB", (9, 9), (10, 20, 30)).convert(mode)
    assert preprocess(image, (4, 4), (0, 0, 0), (1, 1, 1)).shape == (3, 4, 4)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_interpolation_matches_pil(interpolation: str) -> None:
    image = Image.open(io.BytesIO(png_bytes(3, (17, 13))))
    resample = {
        "bicubic": Image.Resampling.BICUBIC,
        "bilinear": Image.Resampling.BILINEAR,
        "nearest": Image.Resampling.NEAREST,
    }[interpolation]
    expected = np.asarray(image.convert("RGB").resize((5, 4), resample), np.float32).transpose(2, 0, 1) / 255
    x = preprocess(image, (4, 5), (0, 0, 0), (1, 1, 1), interpolation)  # type: ignore[arg-type]
    np.testing.assert_allclose(x, expected, atol=1e-6)
