"""The splits of a run: read and screened for training (`read_dataset`, then `prepare_splits`), and read
back afterwards for evaluation, export and the benchmarks (`run_split`).

A resumed run reads the classes and files it recorded, whatever changed in the folder since; every
file of a folder or manifest is decoded once before the first step, filling the pixel caches of
train and val, and unusable files are left out (``--bad-images skip``) or stop the run (``error``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dynadapter.contract import Preprocessing
from dynadapter.errors import DataError
from dynadapter.training import distributed
from dynadapter.training import run_dir as rd
from dynadapter.training.augment import train_augmentation
from dynadapter.training.data.cache import PixelCache, close_caches, make_caches
from dynadapter.training.data.loading import ImageDataset, screen
from dynadapter.training.data.sources import check_classes, few_shot, load_raw, summary
from dynadapter.training.data.splits import SPLITS, FileSplit, RawDataset, SplitSizes, SplitSource
from dynadapter.training.options import TrainOptions

#: A skipped file: (path, split, why it is unusable), as skipped.csv lists it.
SkippedRow = tuple[str, str, str]


@dataclass
class Splits:
    """A run's three splits, screened: ``datasets`` stream them (train augmented), ``raw`` holds the
    classes and the files kept, ``skipped`` the files left out. `close` removes the pixel caches."""

    raw: RawDataset
    datasets: dict[str, ImageDataset]
    skipped: list[SkippedRow]
    run_dir: Path

    def summary(self) -> dict[str, Any]:
        """Images per class and split, files skipped per split, layout and links read once (config.json)."""
        return summary(self.raw, {s: sum(1 for row in self.skipped if row[1] == s) for s in SPLITS})

    def file_lists(self) -> Iterator[tuple[str, list[Path], list[str]]]:
        """(split, files, their class names) of the splits read from files (builtin splits have none)."""
        for name, source in self.raw.splits.items():
            if isinstance(source, FileSplit):
                yield name, source.files, [self.raw.labels[t] for t in source.targets]

    def close(self) -> None:
        """Remove the pixel caches (OUT/.cache goes once empty)."""
        close_caches([d.cache for d in self.datasets.values() if d.cache], self.run_dir)


def read_dataset(opts: TrainOptions, resumed_run: Path | None) -> RawDataset:
    """The data set of ``opts`` and its split, checked to train a classifier (DataError, one line);
    a resumed run reads the split files it recorded."""
    raw = load_raw(opts.data, opts.seed, SplitSizes(opts.val_size, opts.test_size))
    if resumed_run is not None and isinstance(raw.splits["train"], FileSplit):
        config = rd.read_config(resumed_run)  # the classes and files it started with, whatever changed since
        raw.labels, raw.splits = config.labels, {s: run_split(resumed_run, config, s) for s in SPLITS}
    raw = few_shot(raw, opts.shots, opts.seed) if opts.shots else raw
    check_classes(raw, opts.data)
    return raw


def prepare_splits(
    raw: RawDataset,
    pre: Preprocessing,
    opts: TrainOptions,
    out: Path,
    world: distributed.World,
    check_stop: Callable[[], None],
) -> Splits:
    """Datasets of the three splits, every file decoded once (filling the caches of train and val);
    unusable files are left out (``--bad-images skip``) or stop the run (``error``: DataError).

    ``check_stop`` is called before each split (it raises to stop the run). However this fails, no
    cache stays.
    """
    caches = make_caches(raw, pre.size, opts, out, world)
    try:
        datasets, skipped = _screened(raw, pre, opts, world, caches, check_stop)
    except BaseException:  # a bad file, a refusal, Ctrl-C or SIGTERM while screening: no cache stays
        close_caches(caches.values(), out)
        raise
    return Splits(raw, datasets, skipped, out)


def _screened(
    raw: RawDataset,
    pre: Preprocessing,
    opts: TrainOptions,
    world: distributed.World,
    caches: dict[str, PixelCache],
    check_stop: Callable[[], None],
) -> tuple[dict[str, ImageDataset], list[SkippedRow]]:
    """`prepare_splits`' work once its caches exist."""
    augment = train_augmentation(opts, pre.size[0], pre.mean, pre.interpolation)
    data, skipped = {}, []
    for name in SPLITS:
        check_stop()
        source = raw.splits[name]
        data[name] = ImageDataset(source, pre, opts.max_pixels, caches.get(name), seed=opts.seed)
        if not isinstance(source, FileSplit) or not len(source):
            continue  # builtin images are decoded already
        # Each rank decodes its share; the first bad file stops a single process at once.
        stop = opts.bad_images == "error" and world.size == 1
        bad = world.union(screen(data[name], opts.workers, stop, world.shard(np.arange(len(source)))))
        if bad and opts.bad_images == "error":
            first = min(bad)
            raise DataError(f"{source.name(first)}: {bad[first]} (--bad-images skip leaves such files out)")
        data[name].indices = np.array([i for i in range(len(source)) if i not in bad], np.int64)
        raw.splits[name] = source.subset(data[name].indices)
        skipped += [(source.name(i), name, reason) for i, reason in sorted(bad.items())]
    check_classes(raw, opts.data)
    data["train"].augment = augment  # after screening, which fills the cache with the plain images
    return data, skipped


def run_split(run_dir: Path, config: rd.RunConfig, split: str, data: str | None = None) -> SplitSource:
    """The split a run used: its recorded file list where it has one, else the split that its data
    set and recorded options give (builtin data sets, or another ``data``)."""
    if data is None or data == config.data:
        rows = rd.read_split(run_dir, split)
        if rows is not None:
            index = {c: i for i, c in enumerate(config.labels)}
            return FileSplit([Path(p) for p, _ in rows], np.array([index[c] for _, c in rows], np.int64))
    t = config.train
    raw = load_raw(data or config.data, t.seed, SplitSizes(t.val_size, t.test_size))
    if t.shots and (data is None or data == config.data):
        raw = few_shot(raw, t.shots, t.seed)  # a few-shot run's train split is its K images a class
    return raw.splits[split]
