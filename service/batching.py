"""Dynamic micro-batching: concurrent requests share one run of the segment cascade.

Requests wait in a bounded asyncio queue; one worker takes up to `max_batch_size` of them, or
whatever arrived within `max_wait_s` of the first, and runs the cascade in a worker thread (so the
event loop keeps accepting requests). Every image keeps its own thresholds, so requests with
different knobs share a batch. After each segment the images that left there are answered at once
(exit compaction): their futures resolve on the event loop while the thread runs the next segment
on the images still in flight.
"""

import asyncio
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import perf_counter

import numpy as np

from dynadapter.service.segment_runner import ExitResult, SegmentRunner, StageOutput

logger = logging.getLogger(__name__)

StageCallback = Callable[[StageOutput], None]


class QueueFullError(Exception):
    """The queue is at `max_queue`; the client should come back after `retry_after_s`."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"queue full, retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class BatcherClosedError(Exception):
    """The batcher is not running (not started yet, or shutting down)."""


@dataclass(frozen=True)
class _Job:
    image: np.ndarray  # float32 [3, H, W]
    thresholds: np.ndarray  # [K-1]
    future: "asyncio.Future[ExitResult]"


class MicroBatcher:
    def __init__(
        self,
        runner: SegmentRunner,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        on_stage: StageCallback | None = None,
    ) -> None:
        """`on_stage` sees every stage's output on the event loop, just before its leavers are answered."""
        self._runner = runner
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self._on_stage = on_stage
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._running: list[_Job] = []
        self._batch_seconds = 0.1  # running estimate of one batch's time, for Retry-After

    def start(self) -> None:
        # One inference thread: batches run one after another, which is the point of batching.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dynadapter-infer")
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="dynadapter-batcher")

    async def stop(self) -> None:
        """Stop the worker; requests still waiting fail with `BatcherClosedError`."""
        worker, self._worker = self._worker, None
        running = self._running  # read before the cancellation, whose cleanup empties it
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        self._fail(running + self._drain(), BatcherClosedError("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, image: np.ndarray, thresholds: np.ndarray) -> ExitResult:
        """Queue one image and wait for its result; `QueueFullError` at once when the queue is full."""
        if self._worker is None:
            raise BatcherClosedError("the batcher is not running")
        future: asyncio.Future[ExitResult] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(image, thresholds, future))
        except asyncio.QueueFull:
            raise QueueFullError(self.retry_after_s()) from None
        # If the caller gives up (deadline), cancelling it cancels `future` and the worker skips the job.
        return await future

    async def _work(self) -> None:
        while True:
            jobs = [job for job in await self._collect() if not job.future.done()]
            if jobs:
                await self._run(jobs)

    async def _collect(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        jobs = [await self._queue.get()]
        deadline = loop.time() + self._max_wait_s
        while len(jobs) < self._max_batch_size:
            try:
                jobs.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return jobs

    async def _run(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        images = np.stack([job.image for job in jobs])
        thresholds = np.stack([job.thresholds for job in jobs])
        self._running = jobs
        start = perf_counter()
        try:
            await loop.run_in_executor(self._executor, self._cascade, loop, jobs, images, thresholds)
        except Exception as err:  # a failed batch fails its unanswered requests, never the worker
            logger.exception("inference failed for a batch of %d image(s)", len(jobs))
            self._fail(jobs, err)
            return
        finally:
            self._running = []
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (perf_counter() - start)
        # Stage callbacks were queued on the loop before this coroutine resumed, so all have run.
        self._fail(jobs, RuntimeError("the cascade gave no result for this image"))

    def _cascade(
        self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], images: np.ndarray, thresholds: np.ndarray
    ) -> None:
        """In the inference thread: hand each stage's leavers to the loop and go straight on."""
        for stage in self._runner.cascade(images, thresholds):
            loop.call_soon_threadsafe(self._finish_stage, jobs, stage)

    def _finish_stage(self, jobs: list[_Job], stage: StageOutput) -> None:
        # Count before answering, in one loop callback: whoever holds an answer finds it in the metrics.
        if self._on_stage is not None:
            self._on_stage(stage)
        for position, result in stage.exits.items():
            future = jobs[position].future
            if not future.done():  # the caller may have given up (deadline) or the batcher stopped
                future.set_result(result)

    @staticmethod
    def _fail(jobs: list[_Job], err: Exception) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(err)

    def _drain(self) -> list[_Job]:
        jobs = []
        while not self._queue.empty():
            jobs.append(self._queue.get_nowait())
        return jobs

    def free_slots(self) -> int:
        """Images the queue can take now."""
        return self._queue.maxsize - self._queue.qsize()

    def retry_after_s(self) -> int:
        batches_ahead = self._queue.qsize() / self._max_batch_size
        return max(1, math.ceil(batches_ahead * self._batch_seconds))
