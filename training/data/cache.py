"""The pixel cache: each image decoded once, kept resized as uint8 in shared memory when it fits, else
in a file of the run directory (``OUT/.cache``), and removed however the run stops. Later epochs
rebuild the identical float tensor from those pixels without decoding again."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dynadapter.contract import Preprocessing
from dynadapter.training import distributed
from dynadapter.training.data.splits import RawDataset
from dynadapter.training.options import TrainOptions


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


#: Where disk caches are kept, inside the run directory (removed when the run stops).
CACHE_FOLDER = ".cache"


def make_caches(
    raw: RawDataset, size: tuple[int, int], opts: TrainOptions, out: Path, world: distributed.World
) -> dict[str, PixelCache]:
    """uint8 caches for train and val: in memory when they fit (``--cache``), else files in OUT/.cache."""
    n = {s: len(raw.splits[s]) for s in ("train", "val")}
    budget = min(opts.cache_memory_mb * 2**20, available_memory() // 2)
    in_memory = opts.cache == "memory" or (opts.cache == "auto" and cache_bytes(sum(n.values()), size) <= budget)
    caches: dict[str, PixelCache] = {}
    try:
        for s, k in n.items():
            caches[s] = PixelCache(k, size, None if in_memory else out / CACHE_FOLDER / f"{s}-rank{world.rank}.u8")
    except BaseException:  # the second cache failed (a full disk): the first goes too
        close_caches(caches.values(), out)
        raise
    return caches


def close_caches(caches: Iterable[PixelCache], out: Path) -> None:
    """Close the caches (their files go; shared memory, unlinked as torch makes it, goes with the last
    process holding it) and remove OUT/.cache once it is empty (another rank may still use it)."""
    for cache in caches:
        cache.close()
    with contextlib.suppress(OSError):
        (out / CACHE_FOLDER).rmdir()
