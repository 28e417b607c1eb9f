"""Image decoding and preprocessing, shared by serving and training.

Pure PIL + numpy on purpose: `Preprocessing.load` (model_repository.py) calls `decode_image` and
`preprocess`, and training, calibration and serving all read files through it, so a model is
trained on exactly the tensors the service will feed it.

What `decode_image` makes of every input (docs/images.md says the same for users):

- orientation: the EXIF Orientation tag is applied; EXIF that Pillow cannot parse falls back to the
  raw tag, and metadata that cannot be read at all is ignored (an image is never refused for it);
- samples: 16-bit integers are scaled to 8 bits (x / 257), float samples are read as [0, 1] and
  scaled by 255, both clipped to the range; 1-bit, palette, L, LA, CMYK and YCCK become RGB;
- transparency: composited onto opaque white (`BACKGROUND`), so colour hidden under alpha 0 never
  matters;
- colour: an embedded ICC profile is converted to sRGB (a profile that cannot be used is ignored);
- animation and multi-page files: the first frame;
- size: given the model's input size, a JPEG is decoded at a reduced scale in the DCT domain (any
  of libjpeg-turbo's M/8 scales for YCbCr and grayscale JPEGs through simplejpeg; 1/2, 1/4 or 1/8 through
  Pillow's `draft` for CMYK and MPO) and other formats are box-reduced by an integer factor right
  after decoding, never below `REDUCING_GAP` times the input size; the final resize is the model's
  own (`preprocess`).
"""

import io
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Literal

import numpy as np
import pillow_heif
import simplejpeg
from PIL import ExifTags, Image, ImageCms, JpegImagePlugin, UnidentifiedImageError

Interpolation = Literal["bicubic", "bilinear", "nearest"]

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

# HEIC/HEIF (iPhones) through pillow-heif; AVIF is Pillow's own (>= 11.3).
pillow_heif.register_heif_opener()

# Raster formats a client may send, and training may read; anything else (EPS would run
# Ghostscript, for one) is refused. JPEG covers MPO (phone photos with a depth map: first frame).
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")

# Transparent pixels are shown on this background (RGB), as an image viewer on a white page would.
BACKGROUND = (255, 255, 255)

# Reduced-scale decoding stops at this multiple of the model's input size, so that the model's own
# resize still has real pixels to filter: the result stays within the tolerance that
# tests/contract/test_photo_decoding.py asserts (and docs/images.md states) of a full-resolution decode.
REDUCING_GAP = 3

# Peak bytes of one decode per pixel of the encoded image, measured per format at 12 MP with the
# model's input size (docs/images.md has the table): WebP is the worst (16.4, Pillow's decoder
# copies its RGBA output), PNG RGB 4.5, RGBA 8.3, HEIC 8, AVIF 9.7, JPEG 0.5 (3.3 progressive). The decode
# pool's memory budget is a multiple of it (service/decoding.py).
DECODE_BYTES_PER_PIXEL = 17

_ORIENTATION = ExifTags.Base.Orientation
_TRANSPOSE: dict[int, tuple[Image.Transpose, ...]] = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_ICC_MODES = {"RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB", "L": "RGB"}
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


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


def decode_image(data: bytes, max_pixels: int, target_size: Sequence[int] | None = None) -> Image.Image:
    """Decode `data` into an upright 8-bit sRGB "RGB" image (see the module docstring for each case).

    `target_size` = (height, width) of the model input lets the decoder work at reduced scale (never
    below `REDUCING_GAP` x that size); None decodes at full resolution.

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
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            return _normalise(image, data, target_size)
    except ImageTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLargeError(f"image exceeds the limit of {max_pixels} pixels") from err
    except UnidentifiedImageError as err:  # its message names a BytesIO object, nothing the client sent
        raise ImageDecodeError(f"cannot decode image: not an image of {', '.join(ACCEPTED_FORMATS)}") from err
    except Exception as err:  # PIL's decoders raise many types (OSError, SyntaxError, struct.error, ...)
        raise ImageDecodeError(f"cannot decode image: {err}") from err


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLargeError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")


def _normalise(image: Image.Image, data: bytes, target_size: Sequence[int] | None) -> Image.Image:
    """Opened (not yet decoded) image -> upright, reduced, 8-bit, sRGB, opaque RGB."""
    floor = None if target_size is None else REDUCING_GAP * max(target_size)  # either orientation
    image.seek(0)  # the first frame of an animation or a multi-page file (before `draft`, which it would undo)
    frame = _decoded(image, data, floor)
    # Read from the opened file whichever decoder ran (a JPEG's header was parsed on open).
    orientation = exif_orientation(image)
    icc = image.info.get("icc_profile")
    # Reduce before any full-size conversion: the decoded frame is then the only full-size copy
    # besides one of the same size inside `reduce` (DECODE_BYTES_PER_PIXEL).
    samples = _eight_bit(_reduce(_reducible(frame), floor))
    rgb = _opaque_rgb(_to_srgb(samples, icc))
    for method in _TRANSPOSE.get(orientation, ()):
        rgb = rgb.transpose(method)
    return rgb


def _decoded(image: Image.Image, data: bytes, floor: int | None) -> Image.Image:
    """The pixels of `image`'s first frame; a JPEG at the smallest DCT scale keeping both sides >= `floor`.

    libjpeg-turbo scales in eighths (1/8 .. 8/8), and only a scale of 1/2 or less saves time over a
    full decode (simplejpeg's `min_factor` note): below that the JPEG is decoded whole. Every scale
    still entropy-decodes every coefficient, the floor of a JPEG's decode time (docs/images.md).
    """
    if floor is None or not isinstance(image, JpegImagePlugin.JpegImageFile) or min(image.size) < 2 * floor:
        image.load()
        return image
    size = image.size
    if type(image) is JpegImagePlugin.JpegImageFile and image.mode in ("RGB", "L"):
        # simplejpeg reaches libjpeg-turbo's M/8 scales (3/8 of a 2 MP photo where draft stops at 1/2).
        gray = image.mode == "L"
        try:
            pixels = simplejpeg.decode_jpeg(data, "GRAY" if gray else "RGB", min_height=floor, min_width=floor)
            return _true_extent(Image.fromarray(pixels[..., 0] if gray else pixels), size)
        except ValueError:
            pass  # strict about libjpeg's warnings (e.g. extraneous bytes) that Pillow reads through: Pillow decides
    image.draft(image.mode, (floor, floor))  # CMYK (Adobe's inverted samples) and MPO: 1/2, 1/4 or 1/8
    image.load()
    return _true_extent(image, size)


def _true_extent(scaled: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A DCT-scaled decode of an image of `size`, its picture mapped back onto whole pixels.

    libjpeg rounds each scaled side up (its last row and column hold a fraction of a pixel), which
    shifts the picture by up to a scaled pixel: a visible error at the model's size on sides that are
    not multiples of 8. A cheap resample of the small image maps the true extent (size x M/8) back.
    """
    width, height = size
    eighths = round(scaled.width * 8 / width)
    exact_width, exact_height = width * eighths / 8, height * eighths / 8
    if scaled.size == (exact_width, exact_height):
        return scaled
    target = (max(1, round(exact_width)), max(1, round(exact_height)))
    return scaled.resize(target, Image.Resampling.BILINEAR, box=(0, 0, exact_width, exact_height))


def exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation (1-8) of a loaded image; 1 when absent, invalid or unreadable.

    Pillow's parser first; when it fails or finds nothing, the raw tag read from the EXIF block.
    """
    try:
        value = image.getexif().get(_ORIENTATION)
    except Exception:  # a broken EXIF block: the raw tag below may still be readable
        value = None
    if value is None:
        value = raw_exif_orientation(image.info.get("exif"))
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def raw_exif_orientation(exif: object) -> int | None:
    """The Orientation tag read straight from IFD0 of an EXIF block (TIFF layout); None if not found."""
    if not isinstance(exif, bytes):
        return None
    start = max(exif.find(b"II*\x00"), exif.find(b"MM\x00*"))
    if start < 0:
        return None
    order = "<" if exif[start : start + 2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(order + "I", exif, start + 4)
        (count,) = struct.unpack_from(order + "H", exif, start + ifd)
        for entry in range(min(count, 512)):
            tag, kind, _, value = struct.unpack_from(order + "HHIH", exif, start + ifd + 2 + 12 * entry)
            if tag == _ORIENTATION and kind == 3:  # SHORT
                return int(value)
    except struct.error:  # offsets past the end: a truncated or garbled block
        return None
    return None


def _reducible(image: Image.Image) -> Image.Image:
    """Modes `Image.reduce` cannot average (16-bit, palette, 1-bit) as ones it can, values kept."""
    if image.mode.startswith("I;16"):
        return image.convert("I")  # the values are kept (0..65535)
    if image.mode in ("P", "PA"):
        return image.convert("RGBA" if image.has_transparency_data else "RGB")
    if image.mode == "1":
        return image.convert("L")
    return image


def _eight_bit(image: Image.Image) -> Image.Image:
    """Integer samples scaled from the 16-bit range (x / 257), float ones from [0, 1] (x * 255); clipped."""
    if image.mode == "I":
        scaled = np.asarray(image, dtype=np.float32) / 257.0
    elif image.mode == "F":
        scaled = np.nan_to_num(np.asarray(image, dtype=np.float32)) * 255.0
    else:
        return image
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _reduce(image: Image.Image, floor: int | None) -> Image.Image:
    """Box-reduce by the largest integer factor that keeps both sides >= `floor` (alpha-weighted).

    `reduce` rounds the size up (its last row and column average fewer pixels), so a cheap resample
    maps the true extent (size / factor) back onto whole pixels: without it the picture shifts by up
    to half a reduced pixel, a visible error at the model's size.
    """
    if floor is None:
        return image
    factor = min(image.width, image.height) // floor
    if factor < 2:
        return image
    width, height = image.width / factor, image.height / factor
    exact = (round(width), round(height))
    return image.reduce(factor).resize(exact, Image.Resampling.BILINEAR, box=(0, 0, width, height))


def _to_srgb(image: Image.Image, icc: object) -> Image.Image:
    """Convert from the embedded ICC profile to sRGB; a missing, unusable or mismatched profile is skipped."""
    if not isinstance(icc, bytes) or not icc or image.mode not in _ICC_MODES:
        return image
    try:
        return ImageCms.applyTransform(image, _transform(icc, image.mode)) or image
    except (ImageCms.PyCMSError, OSError, ValueError):  # a broken or foreign profile: keep the pixels
        return image


@lru_cache(maxsize=32)
def _transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform:
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return ImageCms.buildTransform(source, _SRGB, mode, _ICC_MODES[mode])


def _opaque_rgb(image: Image.Image) -> Image.Image:
    """Composite any transparency onto `BACKGROUND`; every other mode converts to RGB."""
    if image.mode in _ALPHA_MODES or image.has_transparency_data:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image if image.mode == "RGB" else image.convert("RGB")


def preprocess(
    img: Image.Image,
    size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: Interpolation = "bicubic",
) -> np.ndarray:
    """RGB, resize to `size` = (height, width), scale to [0, 1], normalise; float32 [3, H, W].

    `img` should come from `decode_image`; any other mode is converted by the same rules.
    """
    height, width = size
    rgb = img if img.mode == "RGB" else _opaque_rgb(_eight_bit(_reducible(img)))
    pixels = np.asarray(rgb.resize((width, height), _RESAMPLE[interpolation]), dtype=np.float32) / 255.0
    normalised = (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))
