"""The bounded decode pool: how many images are decoded at once, and how many may wait for it.

Decoding a camera photo is the largest piece of memory a request costs (docs/images.md), so it is
bounded here, by design rather than by luck: `workers` threads decode, outside the event loop, and
at most `queue` more requests may be admitted to wait for them. A request is admitted *before* its
body is read, so the bodies held are bounded too; one beyond that gets `QueueFullError` (503 with
Retry-After). The worst case is then a formula of the settings (`peak_bytes`).
"""

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from time import perf_counter
from typing import TypeVar

from dynadapter.contract.images import DECODE_BYTES_PER_PIXEL
from dynadapter.cpu import usable_cpus
from dynadapter.service.batching import QueueFullError

T = TypeVar("T")

# Default pool size (decode_workers = 0): the CPUs this process may run on, at most this many, so
# that the default memory budget stays bounded on a large host.
MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    """The cores this process may use (dynadapter.cpu.usable_cpus: its affinity mask capped by its cgroup's CPU
    quota), between 1 and `MAX_DEFAULT_WORKERS`."""
    return max(1, min(MAX_DEFAULT_WORKERS, usable_cpus()))


def peak_bytes(workers: int, queue: int, max_pixels: int, max_body_bytes: int) -> int:
    """Worst-case memory of decoding above the process's baseline, in bytes.

    `workers` decodes of the largest image allowed, each at most `DECODE_BYTES_PER_PIXEL` bytes a
    pixel, plus the bodies held: the admitted requests (`workers + queue`) and, after a deadline,
    up to `workers` abandoned decodes still finishing in their threads.
    """
    return workers * max_pixels * DECODE_BYTES_PER_PIXEL + (2 * workers + queue) * max_body_bytes


class DecodePool:
    """`workers` decode threads and room for `queue` more admitted requests; beyond, `QueueFullError`.

    `admit()` and `run()` are called from the event loop only, so the count needs no lock.
    """

    def __init__(self, workers: int, queue: int) -> None:
        self.workers = workers or default_workers()
        self.queue = queue
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="dynadapter-decode")
        self._admitted = 0
        self._decode_seconds = 0.05  # running estimate of one decode's time, for Retry-After

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold one of `workers + queue` places while reading and decoding; `QueueFullError` if none is free."""
        if self._admitted >= self.workers + self.queue:
            raise QueueFullError(self._retry_after_s())
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    async def run(self, decode: Callable[..., T], *args: object) -> T:
        """`decode(*args)` on a pool thread. Cancelling the caller cancels a decode that has not started."""
        start = perf_counter()
        result = await asyncio.get_running_loop().run_in_executor(self._executor, partial(decode, *args))
        self._decode_seconds = 0.9 * self._decode_seconds + 0.1 * (perf_counter() - start)
        return result

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _retry_after_s(self) -> int:
        return max(1, math.ceil(self._admitted / self.workers * self._decode_seconds))
