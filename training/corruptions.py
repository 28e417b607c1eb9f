"""Deterministic image corruptions: the accuracy suite's shifted test split (issue 19) and the corrupted
copies of the validation images that calibration may add (``dynadapter train --calibration-corrupted``).

The kinds follow the two robustness benchmarks of the field: the geometric ones (translate, scale,
rotate) after MNIST-C (Mu & Gilmer 2019, "MNIST-C: A Robustness Benchmark for Computer Vision",
arXiv:1906.02337), the photometric ones (gaussian_blur, gaussian_noise, contrast, jpeg) after
ImageNet-C (Hendrycks & Dietterich 2019, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR; their ``make_imagenet_c.py``), five severities each.

Severity table (``SEVERITIES``; one value per severity 1..5):

=============== ========================================= ==============================================
kind            parameter                                 severity 1 / 2 / 3 / 4 / 5
=============== ========================================= ==============================================
translate       shift, fraction of the shorter side       0.04 / 0.08 / 0.12 / 0.16 / 0.20
scale           zoom factor about the centre              0.90 / 0.80 / 0.70 / 0.60 / 0.50
rotate          angle about the centre, degrees           6 / 12 / 18 / 24 / 30
gaussian_blur   sigma, px per 224 px of the shorter side  1 / 2 / 3 / 4 / 6 (ImageNet-C's, at 224 px)
gaussian_noise  std on the [0, 1] intensity scale         0.08 / 0.12 / 0.18 / 0.26 / 0.38 (ImageNet-C)
contrast        factor c in (x - mean) * c + mean         0.4 / 0.3 / 0.2 / 0.1 / 0.05 (ImageNet-C)
jpeg            JPEG quality (Pillow)                     25 / 18 / 15 / 10 / 7 (ImageNet-C)
=============== ========================================= ==============================================

The geometric values are ours ("small" shifts: at most a fifth of the side, half the size, 30
degrees); MNIST-C applies each of its kinds at one fixed severity. Blur is scaled to the image size
so that a 300x300 solar cell is blurred as a 224 px ImageNet image is, relative to its content;
sides under ``MIN_BLUR_SIDE`` (112 px, the suite's default model input) count as 112, so that an
8x8 or 28x28 digit still gets a blur that survives 8-bit rounding (0.5 px at severity 1).

The seed draws the direction of a translation (uniform angle), the sign of a rotation and the
noise; the same (image, kind, severity, seed) gives the same bytes. Geometric kinds resample
bilinearly and fill with the nearest edge pixel (scipy.ndimage).

`CorruptedDataset` streams corrupted copies of a split as model inputs: each image is corrupted at the
model's input resolution, as uint8 pixels (ImageNet-C corrupts at the 224 px the model sees).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from dynadapter.errors import ConfigError, DataError
from dynadapter.training.data import ImageDataset, from_uint8, to_uint8

SEVERITIES: dict[str, tuple[float, ...]] = {
    "translate": (0.04, 0.08, 0.12, 0.16, 0.20),
    "scale": (0.90, 0.80, 0.70, 0.60, 0.50),
    "rotate": (6.0, 12.0, 18.0, 24.0, 30.0),
    "gaussian_blur": (1.0, 2.0, 3.0, 4.0, 6.0),
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "jpeg": (25, 18, 15, 10, 7),
}
KINDS: tuple[str, ...] = tuple(SEVERITIES)
#: Every severity, the shifted test split's mix.
ALL_SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
#: The mild severities of calibration's corrupted copies: shifts a server plausibly sees, not a
#: benchmark's worst cases (a threshold chosen on severity 5 would send nearly every image to the end).
CALIBRATION_SEVERITIES: tuple[int, ...] = (1, 2)
#: ImageNet-C's blur sigmas are in pixels of a 224 px image.
IMAGENET_C_SIDE = 224
#: Smaller images are blurred as if they had this side (see the module docstring).
MIN_BLUR_SIDE = 112


def _affine(image: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Resample ``image`` (H, W[, C]) at ``matrix @ out + offset`` (row, col), bilinear, edge fill."""
    if image.ndim == 3:  # the channel axis maps to itself
        matrix = np.block([[matrix, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
        offset = np.append(offset, 0.0)
    out = ndimage.affine_transform(image.astype(np.float64), matrix, offset, order=1, mode="nearest")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _about_centre(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply the linear map ``matrix`` (output -> input coordinates) about the image centre."""
    centre = (np.array(image.shape[:2], dtype=np.float64) - 1) / 2
    return _affine(image, matrix, centre - matrix @ centre)


def _translate(image: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    shift = fraction * min(image.shape[:2]) * np.array([np.sin(angle), np.cos(angle)])
    return _affine(image, np.eye(2), -shift)


def _scale(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    return _about_centre(image, np.eye(2) / factor)


def _rotate(image: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    theta = np.deg2rad(degrees) * rng.choice((-1.0, 1.0))
    c, s = np.cos(theta), np.sin(theta)
    return _about_centre(image, np.array([[c, -s], [s, c]]))


def _gaussian_blur(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    pixels = sigma * max(min(image.shape[:2]), MIN_BLUR_SIDE) / IMAGENET_C_SIDE
    sigmas = (pixels, pixels, 0) if image.ndim == 3 else pixels
    out = ndimage.gaussian_filter(image.astype(np.float64), sigmas, mode="nearest")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _gaussian_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    out = image / 255.0 + rng.normal(0.0, std, image.shape)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def _contrast(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    mean = image.mean()
    return np.clip(np.rint((image - mean) * factor + mean), 0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert(Image.fromarray(image).mode))


_APPLY = {
    "translate": _translate,
    "scale": _scale,
    "rotate": _rotate,
    "gaussian_blur": _gaussian_blur,
    "gaussian_noise": _gaussian_noise,
    "contrast": _contrast,
    "jpeg": _jpeg,
}


def _as_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3); a PIL image is converted to L or RGB first."""
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise DataError(f"corrupt: expected uint8 (H, W) or (H, W, 3), got {array.dtype} {array.shape}")
    return array


def corrupt(image: np.ndarray | Image.Image, kind: str, severity: int, seed: int) -> np.ndarray | Image.Image:
    """``image`` corrupted by ``kind`` at ``severity`` (1..5, table in the module docstring).

    Args:
        image: uint8 array (H, W) or (H, W, 3), or a PIL image (L, RGB; other modes go to RGB).
        kind: one of ``KINDS``.
        severity: 1 (mildest) to 5.
        seed: draws the random parts (direction, sign, noise); same inputs give the same bytes.
    Returns:
        The same type, shape and dtype as the input (a PIL image in the mode L or RGB).
    Raises:
        ConfigError: unknown kind or severity. DataError: not a uint8 grey or RGB image.
    """
    if kind not in SEVERITIES:
        raise ConfigError(f"unknown corruption {kind!r}; choose from {list(KINDS)}")
    if severity not in range(1, 6):
        raise ConfigError(f"corruption severity {severity}: choose 1 to 5")
    array = _as_array(image)
    out = _APPLY[kind](array, SEVERITIES[kind][severity - 1], np.random.default_rng(seed))
    return Image.fromarray(out) if isinstance(image, Image.Image) else out


@dataclass(frozen=True)
class ShiftedSplit:
    """A corrupted copy of a test split: image i got ``kinds[i]`` at ``severities[i]``."""

    images: np.ndarray | list[np.ndarray]
    labels: np.ndarray
    kinds: np.ndarray  # (N,) str, one of KINDS
    severities: np.ndarray  # (N,) int, 1..5


def assign(n: int, seed: int, severities: tuple[int, ...] = ALL_SEVERITIES) -> tuple[np.ndarray, np.ndarray]:
    """The mix: kinds and ``severities`` each balanced over the N images (counts differ by at most 1),
    independently shuffled by ``seed`` — every kind about N/7 images, each of S severities about N/S.

    Returns (kinds (N,) str, severities (N,) int); ConfigError for a severity outside 1..5."""
    if not severities or any(s not in ALL_SEVERITIES for s in severities):
        raise ConfigError(f"corruption severities {list(severities)}: choose from 1 to 5")
    rng = np.random.default_rng([seed, n])
    kinds = np.array(KINDS)[rng.permutation(np.arange(n) % len(KINDS))]
    levels = np.asarray(severities)[rng.permutation(np.arange(n) % len(severities))]
    return kinds, levels


def image_seed(seed: int, i: int) -> int:
    """The seed of image ``i``'s random draws in the shifted split of ``seed``."""
    return int(np.random.SeedSequence([seed, i]).generate_state(1)[0])


def shifted_split(images: np.ndarray | list[np.ndarray], labels: np.ndarray, seed: int) -> ShiftedSplit:
    """The shifted test split: each image corrupted once, by the kind and severity ``assign`` gives it.

    Args:
        images: (N, H, W[, 3]) uint8, or a list of N such arrays (sizes may differ).
        labels: (N,) class ids, kept as they are.
        seed: fixes the mix and every image's random draws (``image_seed``).
    Returns:
        A ``ShiftedSplit`` whose images have the container type, shapes and dtype of ``images``.
    """
    kinds, severities = assign(len(images), seed)
    out = [
        corrupt(image, str(k), int(s), image_seed(seed, i))
        for i, (image, k, s) in enumerate(zip(images, kinds, severities, strict=True))
    ]
    return ShiftedSplit(np.stack(out) if isinstance(images, np.ndarray) else out, np.asarray(labels), kinds, severities)


class CorruptedDataset(torch.utils.data.Dataset):
    """``copies`` corrupted copies of a split, streamed as model inputs: item p is (float32 [3, H, W],
    class id) of the clean dataset's item ``p % len(clean)``, its uint8 pixels at the model's input
    resolution corrupted by ``kinds[p]`` at ``severities[p]`` (`assign` over all copies' items, drawn
    from ``severities``) with the draws of ``image_seed(seed, p)``, then normalised again.

    The clean pixels come through ``clean.image`` (its pixel cache where it has one), so copy 0 of a
    dataset over a whole source corrupts image i exactly as `shifted_split` corrupts it.
    """

    def __init__(
        self, clean: ImageDataset, seed: int, copies: int = 1, severities: tuple[int, ...] = ALL_SEVERITIES
    ) -> None:
        if copies < 1:
            raise ConfigError(f"corrupted copies: {copies}; give at least 1")
        self.clean, self.seed, self.copies = clean, seed, copies
        self.kinds, self.severities = assign(copies * len(clean), seed, severities)

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def targets(self) -> np.ndarray:
        """(len,) class ids: the clean targets, once per copy."""
        return np.tile(self.clean.targets, self.copies)

    def pixels(self, p: int) -> np.ndarray:
        """uint8 [H, W, 3]: item p's corrupted pixels at the model's input resolution."""
        i = int(self.clean.indices[p % len(self.clean)])  # type: ignore[index]
        clean = to_uint8(self.clean.image(i), self.clean.pre)
        out = corrupt(clean, str(self.kinds[p]), int(self.severities[p]), image_seed(self.seed, p))
        assert isinstance(out, np.ndarray)
        return out

    def __getitem__(self, p: int) -> tuple[torch.Tensor, int]:
        target = int(self.clean.targets[p % len(self.clean)])
        return torch.from_numpy(from_uint8(self.pixels(p), self.clean.pre)), target
