"""Streaming a split: an `ImageDataset` reads one file at a time through ``Preprocessing.load`` (the
service's own path from bytes to a model input), so no full-resolution pixels of the data set are held;
`screen` decodes every file once to find the unusable ones; `stream` is the DataLoader of both. The
training split alone may be augmented (training/augment.py) on its way from the cached pixels to the tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from dynadapter.contract import ImageDecodeError, ImageTooLargeError, Preprocessing
from dynadapter.errors import DataError
from dynadapter.training.augment import seeded
from dynadapter.training.data.cache import PixelCache, from_uint8, to_uint8

#: Why a file cannot be used as an image (unreadable, empty, corrupt, unsupported, too large).
BAD_IMAGE_ERRORS = (OSError, ImageDecodeError, ImageTooLargeError)


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
