"""The images a benchmark sends: uploads encoded once, up front (the load generator shares the CPU with the
servers and should spend as little of it as possible per request), with each image's class."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynadapter.errors import DataError

BOUNDARY = "dynadapter-bench-boundary"
HEADERS = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


@dataclass(frozen=True)
class BenchImages:
    """The uploads a benchmark sends, in order, with each image's class and the data set's name."""

    bodies: list[bytes]  # multipart/form-data bodies, field "file", one PNG each
    targets: list[int]
    data: str


def bench_images(run_dir: Path, count: int | None) -> BenchImages:
    """The first ``count`` images of the run's test split (None: all of them), as uploads (builtin arrays
    as PNG, files as they are), with their classes."""
    from dynadapter.training.data import run_split
    from dynadapter.training.run_dir import read_config

    config = read_config(run_dir)
    split = run_split(run_dir, config, "test")  # the run's own test split: no training image is sent
    if not len(split):
        raise DataError(f"the test split of {config.data} is empty: no images to send")
    n = len(split) if count is None else min(count, len(split))
    bodies = [multipart_body(split.encoded(i)) for i in range(n)]
    return BenchImages(bodies, [int(t) for t in split.targets[:n]], config.data)


def multipart_body(png: bytes) -> bytes:
    """An image's bytes as a multipart/form-data body with one field, ``file`` (``HEADERS`` names the boundary)."""
    # Encoded once, up front: the load generator shares the CPU with the servers and should spend
    # as little of it as possible per request.
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="image.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    )
    return head.encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


def split_digits(data: str, seed: int, count: int) -> tuple[list[np.ndarray], list[int]]:
    """The first ``count`` images of ``data``'s test split (split with ``seed``) as [h, w] uint8 arrays, and
    their classes."""
    from dynadapter.training.data import load_raw

    split = load_raw(data, seed).splits["test"]
    pixels = [np.asarray(p) for p in split.pixels[:count]]
    digits = [p if p.ndim == 2 else p.mean(axis=2).astype(np.uint8) for p in pixels]
    return digits, [int(t) for t in split.targets[:count]]


def camera_bodies(digits: list[np.ndarray], size: tuple[int, int]) -> list[bytes]:
    """Each digit as a phone JPEG of ``size`` (width, height) pixels, as an upload (``lab.photo_corpus``)."""
    from dynadapter.bench.lab.photo_corpus import camera_jpeg, digit_photo

    return [multipart_body(camera_jpeg(digit_photo(d, *size, seed=i))) for i, d in enumerate(digits)]
