"""Image decoding and preprocessing, shared by serving and training.

Pure PIL + numpy on purpose: the training package imports `preprocess` so that a model is trained
on exactly the tensors the service will feed it.
"""

import io
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

Interpolation = Literal["bicubic", "bilinear", "nearest"]

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

# Raster formats a client may send; anything else (EPS would run Ghostscript, for one) is refused.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG covers MPO (phone photos)


class ImageDecodeError(ValueError):
    """The bytes are empty or not a complete image in an accepted format."""


class ImageTooLargeError(ValueError):
    """The image has more pixels than allowed (a decompression bomb, or just too big)."""


@contextmanager
def pil_pixel_limit(max_pixels: int) -> Iterator[None]:
    """While inside, PIL itself refuses images over `max_pixels`: a second line behind `decode_image`.

    PIL's guard is a process-wide global, so the service sets it once for its lifetime.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    # Between 1x and 2x its limit PIL only warns; as an error, decode_image refuses those quietly too.
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode `data` into a fully loaded PIL image, upright per its EXIF orientation.

    Raises `ImageDecodeError` for empty, truncated, corrupt or unsupported data and
    `ImageTooLargeError` when the header announces more than `max_pixels` pixels, before any
    pixel data is decompressed.
    """
    if not data:
        raise ImageDecodeError("empty image")
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as probe:
            _check_pixels(probe.size, max_pixels)
            probe.verify()  # checksums and structure, without decoding pixels
        # verify() leaves the image unusable: decode from a fresh handle.
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        image.load()
        upright = ImageOps.exif_transpose(image)
    except ImageTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLargeError(f"image exceeds the limit of {max_pixels} pixels") from err
    except Exception as err:  # PIL's decoders raise many types (OSError, SyntaxError, struct.error, ...)
        raise ImageDecodeError(f"cannot decode image: {err}") from err
    return upright


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLargeError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")


def preprocess(
    img: Image.Image,
    size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: Interpolation = "bicubic",
) -> np.ndarray:
    """RGB, resize to `size` = (height, width), scale to [0, 1], normalise; float32 [3, H, W]."""
    height, width = size
    rgb = img.convert("RGB").resize((width, height), _RESAMPLE[interpolation])
    pixels = np.asarray(rgb, dtype=np.float32) / 255.0
    normalised = (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))
