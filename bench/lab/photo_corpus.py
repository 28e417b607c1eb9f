"""Deterministic synthetic photos with the characteristics of real camera and editor files.

A scene is one of scikit-learn's two sample photos (the only photos the project may use besides the
bundled digits), resampled to the requested size with seeded sensor-like noise, so that a 12 MP
JPEG weighs what a phone's does. `corpus` encodes one scene in every way a camera or an image
editor stores pixels (EXIF orientation, progressive JPEG, 16-bit, float, alpha, palette, 1-bit,
CMYK, ICC profiles, animation, HEIC, AVIF, ...), each with the upright RGB picture a correct decoder
must produce (`PhotoCase.expected`). Same arguments, same bytes: tests and benchmarks import it.

    python -m dynadapter.bench.lab.photo_corpus OUT_DIR [--width W --height H]   # writes the corpus as files
"""

from __future__ import annotations

import argparse
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

from dynadapter.contract.images import BACKGROUND

ORIENTATION = 0x0112
CAMERA_TAGS = {0x010F: "Synthetic", 0x0110: "Phone 12MP", 0x0131: "dynadapter bench/lab/photo_corpus.py"}


@dataclass(frozen=True)
class PhotoCase:
    """One encoded file and the upright 8-bit RGB picture a correct decoder makes of it."""

    name: str
    data: bytes
    expected: Image.Image
    lossy: bool  # JPEG/HEIC/AVIF/WebP: compare with a tolerance, not exactly


@lru_cache(maxsize=2)
def _sample(index: int) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    return load_sample_images().images[index % 2]  # china.jpg, flower.jpg: uint8 [427, 640, 3]


def scene(width: int, height: int, seed: int = 0, noise: float = 6.0) -> Image.Image:
    """An RGB photo of `width` x `height`: a sample photo resampled, plus seeded grain (std in 8-bit levels)."""
    base = Image.fromarray(_sample(seed)).resize((width, height), Image.Resampling.BICUBIC)
    if noise <= 0:
        return base
    rng = np.random.default_rng(seed)
    pixels = np.asarray(base, dtype=np.int16)
    grain = rng.normal(0.0, noise, size=pixels.shape[:2] + (1,)).astype(np.int16)  # luminance grain
    return Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8))


def digit_photo(digit: np.ndarray, width: int, height: int, seed: int = 0) -> Image.Image:
    """A [h, w] uint8 digit upscaled to a camera-sized RGB photo with paper texture and noise."""
    rng = np.random.default_rng(seed)
    stroke = Image.fromarray(digit).resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(stroke, dtype=np.int16)[..., None].repeat(3, axis=2)
    grain = rng.normal(0.0, 4.0, size=(height, width, 1)).astype(np.int16)
    return Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def camera_jpeg(image: Image.Image, quality: int = 90, orientation: int = 6, progressive: bool = False) -> bytes:
    """A phone-style JPEG: pixels stored sideways with EXIF Orientation `orientation` (6: rotate to view)."""
    stored = image.transpose(Image.Transpose.ROTATE_90) if orientation == 6 else image
    exif = Image.Exif()
    exif.update(CAMERA_TAGS)
    exif[ORIENTATION] = orientation
    return encode(stored, "JPEG", quality=quality, exif=exif, progressive=progressive, subsampling="4:2:0")


def broken_exif_jpeg(image: Image.Image) -> bytes:
    """Stored sideways, Orientation 6 in an EXIF block Pillow cannot parse (junk before the TIFF header)."""
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", ORIENTATION, 3, 1, 6, 0) + b"\0" * 4
    return encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=92, exif=b"Exif\x00\x00JUNK" + tiff)


def display_p3_profile() -> bytes:
    """An ICC v2 RGB matrix/TRC profile with Display P3 primaries (D50-adapted) and gamma 2.2."""
    colorants = {
        b"rXYZ": (0.5151, 0.2412, -0.0011),
        b"gXYZ": (0.2920, 0.6922, 0.0419),
        b"bXYZ": (0.1571, 0.0666, 0.7841),
    }

    def xyz(values: tuple[float, float, float]) -> bytes:
        return b"XYZ \0\0\0\0" + b"".join(struct.pack(">i", round(v * 65536)) for v in values)

    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(2.2 * 256)) + b"\0\0"
    text = b"Display P3 (synthetic)\0"
    tags = [(b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 79)]
    tags += [(b"wtpt", xyz((0.9642, 1.0, 0.8249)))] + [(tag, xyz(value)) for tag, value in colorants.items()]
    tags += [(b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve), (b"cprt", b"text\0\0\0\0public domain\0")]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = struct.pack(">I4sI4s4s4s", size, b"none", 0x02100000, b"mntr", b"RGB ", b"XYZ ") + b"\0" * 12
    header += b"acsp" + b"\0" * 28 + struct.pack(">iii", 63190, 65536, 54061) + b"\0" * 48
    return header + struct.pack(">I", len(tags)) + table + body


def _flatten(rgba: Image.Image) -> Image.Image:
    flat = Image.new("RGB", rgba.size, BACKGROUND)
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


def _with_alpha(image: Image.Image, seed: int) -> tuple[Image.Image, Image.Image]:
    """The image with a soft alpha ramp and a transparent band whose hidden colour is seeded noise."""
    width, height = image.size
    ramp = np.tile(np.linspace(0, 255, width, dtype=np.float32), (height, 1))
    ramp[:, : width // 4] = 0  # a fully transparent band
    hidden = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels = np.where(ramp[..., None] == 0, hidden, np.asarray(image))
    rgba = Image.fromarray(np.dstack([pixels, ramp.astype(np.uint8)]))
    return rgba, _flatten(rgba)


def _gray16(image: Image.Image) -> tuple[Image.Image, Image.Image]:
    levels = np.asarray(image.convert("L"), dtype=np.uint16) * 257  # the full 16-bit range
    return Image.fromarray(levels), image.convert("L").convert("RGB")


def _gray_float(image: Image.Image) -> tuple[Image.Image, Image.Image]:
    gray = image.convert("L")
    return Image.fromarray(np.asarray(gray, dtype=np.float32) / 255.0), gray.convert("RGB")


def _animated_gif(image: Image.Image) -> bytes:
    second = Image.new("RGB", image.size, (255, 0, 0))  # a first-frame decoder never sees red
    frames = [image.quantize(256, dither=Image.Dither.NONE), second.quantize(2)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def corpus(width: int = 96, height: int = 64, seed: int = 0) -> list[PhotoCase]:
    """Every case a decoder must get right, on one `width` x `height` scene (upright, landscape)."""
    photo = scene(width, height, seed, noise=2.0)
    rgba, on_white = _with_alpha(photo, seed)
    rgba_other, _ = _with_alpha(photo, seed + 1)  # same picture, other colour under alpha 0
    gray16, gray = _gray16(photo)
    gray_float, _ = _gray_float(photo)
    palette = photo.quantize(64, dither=Image.Dither.NONE)
    bilevel = photo.convert("1", dither=Image.Dither.NONE)
    srgb_icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    p3 = display_p3_profile()
    p3_expected = ImageCms.profileToProfile(photo, ImageCms.ImageCmsProfile(io.BytesIO(p3)), srgb_icc_profile())
    cases: list[tuple[str, Callable[[], bytes], Image.Image, bool]] = [
        ("jpeg-exif-orientation-6", lambda: camera_jpeg(photo), photo, True),
        ("jpeg-progressive", lambda: camera_jpeg(photo, quality=85, orientation=1, progressive=True), photo, True),
        ("jpeg-broken-exif", lambda: broken_exif_jpeg(photo), photo, True),
        (
            "jpeg-cmyk",
            lambda: encode(photo.convert("CMYK"), "JPEG", quality=95),
            photo.convert("CMYK").convert("RGB"),
            True,
        ),
        ("jpeg-icc-display-p3", lambda: encode(photo, "JPEG", quality=95, icc_profile=p3), p3_expected, True),
        ("png-rgb-icc-srgb", lambda: encode(photo, "PNG", icc_profile=srgb_icc), photo, False),
        ("png-16bit-gray", lambda: encode(gray16, "PNG"), gray, False),
        ("tiff-16bit-gray", lambda: encode(gray16, "TIFF"), gray, False),
        ("tiff-float-gray", lambda: encode(gray_float, "TIFF"), gray, False),
        ("png-rgba", lambda: encode(rgba, "PNG"), on_white, False),
        ("png-rgba-other-hidden-colour", lambda: encode(rgba_other, "PNG"), on_white, False),
        ("png-la", lambda: encode(rgba.convert("LA"), "PNG"), _flatten(rgba.convert("LA").convert("RGBA")), False),
        ("png-palette", lambda: encode(palette, "PNG"), palette.convert("RGB"), False),
        ("png-1bit", lambda: encode(bilevel, "PNG"), bilevel.convert("RGB"), False),
        (
            "gif-animated-first-frame",
            lambda: _animated_gif(photo),
            photo.quantize(256, dither=Image.Dither.NONE).convert("RGB"),
            False,
        ),
        ("bmp", lambda: encode(photo, "BMP"), photo, False),
        ("tiff-rgb", lambda: encode(photo, "TIFF"), photo, False),
        ("webp", lambda: encode(photo, "WEBP", quality=90), photo, True),
        ("heic", lambda: encode(photo, "HEIF", quality=90), photo, True),
        ("avif", lambda: encode(photo, "AVIF", quality=90), photo, True),
    ]
    return [PhotoCase(name, make(), expected, lossy) for name, make, expected, lossy in cases]


@lru_cache(maxsize=1)
def srgb_icc_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def camera_set(seed: int = 0, scale: float = 1.0) -> dict[str, bytes]:
    """The benchmark's camera-sized inputs: 12 MP and 2 MP phone JPEGs, a 12 MP PNG, a 12 MP HEIC.

    `scale` shrinks every side (tests use a small set). The PNG is the scene without grain, as an
    editor's export would be: with grain a 12 MP PNG weighs 15 MB, over the service's body limit.
    """

    def side(pixels: int) -> int:
        return max(16, round(pixels * scale))

    twelve = scene(side(4032), side(3024), seed)
    return {
        "jpeg-12mp": camera_jpeg(twelve, quality=90),
        "jpeg-2mp": camera_jpeg(scene(side(1920), side(1080), seed + 1), quality=90, orientation=1),
        "png-12mp": encode(scene(side(4032), side(3024), seed, noise=0), "PNG"),
        "heic-12mp": encode(twelve, "HEIF", quality=80),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=4032)
    parser.add_argument("--height", type=int, default=3024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for case in corpus(args.width, args.height, args.seed):
        (args.out / case.name).write_bytes(case.data)


if __name__ == "__main__":
    main()
