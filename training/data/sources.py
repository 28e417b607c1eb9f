"""Data sources: a folder as users have it, a CSV manifest, or ``builtin:<name>`` (training/data/builtin.py),
read into a split `RawDataset`.

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
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

from dynadapter.errors import DataError
from dynadapter.training.data.builtin import BUILTIN_DATASETS
from dynadapter.training.data.splits import SPLITS, FileSplit, RawDataset, RawSplit, SplitSizes, stratified_order

IGNORED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})
#: Fewer validation images than this cannot calibrate thresholds to any useful precision.
MIN_CALIBRATION_IMAGES = 10


def is_ignored(name: str) -> bool:
    """Hidden (dot) names, AppleDouble ``._*`` companions and OS litter: never images, never classes."""
    return name.startswith(".") or name in IGNORED_NAMES


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
