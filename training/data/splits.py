"""What a data set is once read: its splits (`RawSplit` of decoded arrays, `FileSplit` of image files),
the `RawDataset` holding them, how many images to hold out (`SplitSizes`), and the stratified, seeded
orders that carve splits out of one set of images."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from dynadapter.contract import Preprocessing
from dynadapter.errors import DataError

SPLITS = ("train", "val", "test")
#: A fractional ``--val-size`` / ``--test-size`` takes at most this many images: enough to measure
#: accuracy to a fraction of a point, without taking tens of thousands of images from training.
MAX_HOLDOUT = 5000


class SplitSource(Protocol):
    """One split's images, indexable: what `ImageDataset` streams from."""

    targets: np.ndarray  # [N] int64 class ids

    def __len__(self) -> int: ...
    def load(self, i: int, pre: Preprocessing, max_pixels: int) -> np.ndarray: ...
    def encoded(self, i: int) -> bytes: ...
    def name(self, i: int) -> str: ...


@dataclass
class RawSplit:
    """Builtin images as 8-bit arrays (grayscale HxW or HxWx3) with their class indices."""

    pixels: list[np.ndarray]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, i: int, pre: Preprocessing, max_pixels: int) -> np.ndarray:
        """float32 [3, H, W]; these arrays are decoded already, so ``max_pixels`` does not apply."""
        return pre(Image.fromarray(self.pixels[i]))

    def encoded(self, i: int) -> bytes:
        """The image as PNG bytes (what a client would upload)."""
        buffer = io.BytesIO()
        Image.fromarray(self.pixels[i]).save(buffer, format="PNG")
        return buffer.getvalue()

    def name(self, i: int) -> str:
        return f"#{i}"


@dataclass
class FileSplit:
    """Image files with their class indices; nothing is read until an image is asked for."""

    files: list[Path]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, i: int, pre: Preprocessing, max_pixels: int) -> np.ndarray:
        """float32 [3, H, W] through the service's path; OSError, ImageDecodeError, ImageTooLargeError."""
        return pre.load(self.files[i].read_bytes(), max_pixels)

    def encoded(self, i: int) -> bytes:
        return self.files[i].read_bytes()

    def name(self, i: int) -> str:
        return str(self.files[i])

    def subset(self, keep: np.ndarray) -> FileSplit:
        return FileSplit([self.files[i] for i in keep], self.targets[keep])


@dataclass
class RawDataset:
    labels: list[str]
    splits: dict[str, Any]  # split name -> RawSplit | FileSplit
    layout: str = "builtin"
    duplicates: int = 0  # files reached more than once (links, a manifest row repeated), read once


@dataclass(frozen=True)
class SplitSizes:
    """How many images to hold out where the data set does not say: a fraction (< 1) of the images,
    at most `MAX_HOLDOUT`, or a count (>= 1)."""

    val: float = 0.15
    test: float = 0.15

    def count(self, name: str, n: int) -> int:
        size = getattr(self, name)
        return int(size) if size >= 1 else min(MAX_HOLDOUT, round(size * n))


def stratified_order(targets: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic permutation in which every contiguous run holds each class in proportion.

    Each class's members, shuffled, are spread evenly over [0, 1) (the i-th at (i + phase) / n_c,
    with a random phase per class); sorting by that position interleaves the classes, so any slice
    of length L holds n_c * L / N (+-2) images of class c: small classes are never left out.
    """
    rng = np.random.default_rng(seed)
    position = np.empty(len(targets))
    for c in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == c))
        position[members] = (np.arange(len(members)) + rng.random()) / len(members)
    return np.argsort(position, kind="stable")


def stratified_indices(targets: np.ndarray, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Disjoint, class-stratified index sets of the given sizes, one per split (VTAB-1k: 800 / 200)."""
    bounds = np.cumsum([0, *(sizes[name] for name in SPLITS)])
    if bounds[-1] > len(targets):
        raise DataError(f"splits of {sizes} need {bounds[-1]} images, the data set has {len(targets)}")
    order = stratified_order(targets, seed)
    return {name: order[a:b] for name, a, b in zip(SPLITS, bounds[:-1], bounds[1:], strict=True)}
