"""Dynamic micro-batching: concurrent requests share one run of the segment cascade.

Requests wait in a bounded asyncio queue; one worker takes up to `max_batch_size` of them, or
whatever arrived within `max_wait_s` of the first, and runs the cascade in a worker thread (so the
event loop keeps accepting requests). The wait is adaptive, as Triton's dynamic batcher forms a batch
at once when nothing more is queued: where the owner says how many requests are on their way
(`coming`: admitted, their bodies still being read or decoded), a batch waits only while one is, and a
lone request runs at once instead of waiting `max_wait_s` for company that is not coming.

Every image keeps its own thresholds, so requests with different knobs share a batch. After each
segment the images that left there are answered at once (exit compaction): their futures resolve on
the event loop while the thread runs the next segment on the images still in flight.

A request that is cancelled (its client went away: dynadapter.service.disconnect) cancels its jobs: a
queued job is skipped, and a running one leaves the batch before the next segment runs (the cascade
reads a per-batch array of flags between segments); each such image is counted by `on_cancel`.

Each job carries its deadline (`time.perf_counter()` seconds): a job still queued when its deadline
passes, or one whose first segment cannot finish in time, fails with `DeadlineError` (504); once
running, the cascade lets it leave at the exit it has (dynadapter.service.deadlines). When the queue
is empty after a batch is formed, `shadow_sampler` may pick images of it to run on past their answer
(live calibration: spare capacity only). Observers of each stage (metrics, live calibration) subscribe
to `observers` (dynadapter.service.observers); one that raises fails no request.
"""

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import perf_counter, time_ns

import numpy as np

from dynadapter.service.deadlines import NO_DEADLINE, DeadlineError
from dynadapter.service.observers import StageObserver, StageObservers
from dynadapter.service.segment_runner import ExitResult, SegmentRunner, StageOutput
from dynadapter.service.tracing import ImageTrace, record_queue_waits, record_stage

logger = logging.getLogger(__name__)

CancelCallback = Callable[[], None]  # one image of a cancelled request left the queue or its batch
Coming = Callable[[], int]  # requests known to be on their way to the queue (admitted, not yet queued)
ShadowSampler = Callable[[int], np.ndarray]  # batch size -> [B] bool: which images to shadow


class QueueFullError(Exception):
    """The queue is at `max_queue`; the client should come back after `retry_after_s`."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"queue full, retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class BatcherClosedError(Exception):
    """The batcher is not running (not started yet, or shutting down)."""


@dataclass
class _Job:
    image: np.ndarray  # float32 [3, H, W]
    thresholds: np.ndarray  # [K-1]
    deadline: float  # time.perf_counter() seconds; inf: none
    future: "asyncio.Future[ExitResult]"
    started: bool = False  # in a running batch: it gets an answer at the end of the segment it is in
    # Set on the event loop when the request is cancelled while this job runs; the inference thread reads
    # it between segments (one bool of a numpy array: a write and a read under the GIL, no lock needed).
    flags: np.ndarray | None = None
    position: int = 0  # this job's row in `flags`
    trace: ImageTrace | None = None  # its request's span, when traced (dynadapter.service.tracing)

    def cancel(self) -> bool:
        """The caller gave up: stop the job where it is. True if it had no answer yet (one cancelled image)."""
        if self.future.done():
            return False
        self.future.cancel()
        if self.flags is not None:
            self.flags[self.position] = True
        return True


class MicroBatcher:
    """One model version's request queue and its worker: batches of queued images through the cascade.

    Owns an asyncio queue of jobs (at most `max_queue`), one worker task on the event loop and one
    inference thread that runs the cascade. Lifecycle: `start` (inside a running loop), `submit` from
    any coroutine on that loop, `stop` fails what is still queued or running with `BatcherClosedError`.
    Everything but the cascade runs on the event loop; the thread hands stage outputs back to it with
    `call_soon_threadsafe`, so `observers` and the futures are only touched there.
    """

    def __init__(
        self,
        runner: SegmentRunner,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        observers: Sequence[StageObserver] = (),
        shadow_sampler: ShadowSampler | None = None,
        on_cancel: CancelCallback | None = None,
        coming: Coming | None = None,
    ) -> None:
        """`observers` see every stage's output on the event loop, just before its leavers are answered
        (more may `observers.subscribe`); `on_cancel` is called once per image whose request was cancelled
        before it was answered. `coming`: how many requests are on their way to the queue now; a batch
        waits for more (up to `max_wait_s`) only while it is above 0, and the owner calls `notify` when it
        falls without a job being queued. None: nothing is known, so every batch waits the full `max_wait_s`."""
        self.observers = StageObservers(observers)
        self._runner = runner
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self._shadow_sampler = shadow_sampler
        self._on_cancel = on_cancel
        self._coming = coming
        self._changed = asyncio.Event()  # a job was queued, or `coming` fell: a waiting batch looks again
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

    async def submit(
        self, image: np.ndarray, thresholds: np.ndarray, deadline: float = NO_DEADLINE, trace: ImageTrace | None = None
    ) -> ExitResult:
        """Queue one image and wait for its result; `QueueFullError` at once when the queue is full. `trace`:
        its request's span, which gets its queue wait and the segment runs it took part in.

        `DeadlineError` when `deadline` (perf_counter seconds) passes while the image is still queued,
        or its first segment cannot finish before it.
        """
        if self._worker is None:
            raise BatcherClosedError("the batcher is not running")
        future: asyncio.Future[ExitResult] = asyncio.get_running_loop().create_future()
        job = _Job(image, thresholds, deadline, future, trace=trace)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFullError(self.retry_after_s()) from None
        self._changed.set()
        # If the caller gives up (its client went away), the job is cancelled: skipped while queued, dropped
        # from its batch before the next segment while running.
        try:
            return await self._wait(job)
        except asyncio.CancelledError:
            if job.cancel() and self._on_cancel is not None:
                self._on_cancel()
            raise

    async def _wait(self, job: _Job) -> ExitResult:
        future, deadline = job.future, job.deadline
        if deadline == NO_DEADLINE:
            return await asyncio.shield(future)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(deadline - perf_counter(), 0.0))
        except asyncio.TimeoutError:
            if not job.started:
                future.cancel()
                raise DeadlineError("the deadline passed while the image waited in the queue") from None
        # Running: it leaves with the exit it has at the end of the segment it is in; wait that long (twice
        # the slowest segment's estimate, for noise) and no longer.
        grace = 2 * self._runner.times.slowest(self._max_batch_size) + 0.01
        try:
            return await asyncio.wait_for(asyncio.shield(future), grace)
        except asyncio.TimeoutError:
            raise DeadlineError("the deadline passed before the image reached its first exit") from None

    def notify(self) -> None:
        """`coming` fell without a job being queued (a request failed before it reached the queue): a batch
        waiting for it runs now rather than at `max_wait_s`. Harmless when nothing waits."""
        self._changed.set()

    def queue_delay_s(self) -> float:
        """Expected wait of an image queued now, in seconds: the batches ahead of it times a batch's time."""
        return self._queue.qsize() / self._max_batch_size * self._batch_seconds

    async def _work(self) -> None:
        while True:
            jobs = self._in_time([job for job in await self._collect() if not job.future.done()])
            if jobs:
                await self._run(jobs)

    def _in_time(self, jobs: list[_Job]) -> list[_Job]:
        """The jobs whose first segment can finish before their deadline; the others fail with 504 now."""
        finish = perf_counter() + self._runner.times.estimate(0, len(jobs))
        late = [job for job in jobs if job.deadline < finish]
        self._fail(late, DeadlineError("the first segment cannot finish before the deadline"))
        return [job for job in jobs if job.deadline >= finish]

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
            if remaining <= 0 or not self._more_coming():
                break
            self._changed.clear()
            try:  # woken by the next job queued, or by `notify`; then look again
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return jobs

    def _more_coming(self) -> bool:
        """Whether waiting may fill the batch: requests are on their way (or nobody says, the fixed wait)."""
        return self._coming is None or self._coming() > 0

    async def _run(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        images = np.stack([job.image for job in jobs])
        thresholds = np.stack([job.thresholds for job in jobs])
        deadlines = np.array([job.deadline for job in jobs])
        spare = self._queue.empty()  # shadow work only when nothing else waits
        shadow = self._shadow_sampler(len(jobs)) if self._shadow_sampler is not None and spare else None
        cancelled = np.zeros(len(jobs), dtype=bool)
        for position, job in enumerate(jobs):
            job.started, job.flags, job.position = True, cancelled, position
        self._running = jobs
        if any(job.trace is not None for job in jobs):
            record_queue_waits([job.trace for job in jobs], time_ns())
        start = perf_counter()
        try:
            await loop.run_in_executor(
                self._executor, self._cascade, loop, jobs, images, thresholds, deadlines, shadow, cancelled
            )
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
        self,
        loop: asyncio.AbstractEventLoop,
        jobs: list[_Job],
        images: np.ndarray,
        thresholds: np.ndarray,
        deadlines: np.ndarray,
        shadow: np.ndarray | None,
        cancelled: np.ndarray,
    ) -> None:
        """In the inference thread: hand each stage's leavers to the loop and go straight on."""
        for stage in self._runner.cascade(images, thresholds, deadlines, shadow, cancelled):
            loop.call_soon_threadsafe(self._finish_stage, jobs, stage, time_ns())

    def _finish_stage(self, jobs: list[_Job], stage: StageOutput, end_ns: int) -> None:
        # Count before answering, in one loop callback: whoever holds an answer finds it in the metrics.
        self.observers.notify(stage)
        if any(job.trace is not None for job in jobs):  # the jobs still waiting ran this segment
            record_stage([None if job.future.done() else job.trace for job in jobs], stage, end_ns)
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
