"""One served model version: its verified files, its segment sessions and its micro-batcher.

The hooks LitServe would name setup (`load`, `warm_up`), decode (`prepare`) and predict
(`classify`) live here; HTTP concerns stay in `dynadapter.service.routes`.
"""

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from time import perf_counter

import numpy as np

from dynadapter.contract.model_repository import Manifest, ModelLoadError, ModelVersion
from dynadapter.service.backends.choice import open_runner
from dynadapter.service.batching import MicroBatcher, QueueFullError
from dynadapter.service.deadlines import NO_DEADLINE
from dynadapter.service.decoding import DecodePool
from dynadapter.service.exit_policy import DEFAULT_MODE, ExitPolicy, choose_policy
from dynadapter.service.latency_controller import LatencyController, accuracy_floor, operating_curve
from dynadapter.service.live_calibration import LiveCalibrator
from dynadapter.service.metrics import ServiceMetrics
from dynadapter.service.segment_runner import ExitResult, SegmentRunner, StageOutput
from dynadapter.service.settings import Settings
from dynadapter.service.tracing import ImageTrace, image_trace

logger = logging.getLogger(__name__)


class NonFiniteOutputError(Exception):
    """The model gave NaN or infinite scores for the image at `index` of a request (its input's fault)."""

    def __init__(self, index: int = 0) -> None:
        super().__init__(f"the model gave non-finite scores for image {index}")
        self.index = index


def _rss_bytes() -> int:
    """This process's resident memory now (Linux /proc); 0 where there is no /proc."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


class Engine:
    """One served model version: its verified files, its runner (segment sessions), its micro-batcher, its
    latency controller and live calibrator, and the metric series named after it.

    Lifecycle (driven by the registry, dynadapter.service.registry): `load` (verify, open the sessions;
    in a worker thread), `warm_up` (same), `start` on the event loop (batcher and control task), then
    requests hold it with `admitted`; `retire` waits for them and stops it, `discard` stops one that
    never served. Apart from `load` and `warm_up`, every method runs on the event loop; the cascade runs
    in the batcher's inference thread and reports back through the stage observers on the loop.
    """

    def __init__(
        self,
        model: ModelVersion,
        runner: SegmentRunner,
        settings: Settings,
        metrics: ServiceMetrics,
        memory_bytes: int,
        decoder: DecodePool,
    ) -> None:
        self.model = model
        self.runner = runner
        self.memory_bytes = memory_bytes  # how much the resident memory grew while loading it
        self._metrics = metrics
        self._inflight = 0  # requests holding this version (`admitted`)
        self._queued_requests = 0  # of those, the ones whose images are in the batcher (`classify_all`)
        self._idle = asyncio.Event()
        self._idle.set()
        self._max_pixels = settings.max_pixels
        self._decoder = decoder  # the process's bounded decode pool, shared by every model
        self._warm_batch_sizes = {1, settings.max_batch_size}
        self.live = _live_calibrator(model.manifest, settings)
        self.controller = latency_controller(model.manifest, settings)
        self._control_task: asyncio.Task[None] | None = None
        self._batcher = MicroBatcher(
            runner,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
            observers=[self._count_stage, self._calibrate_live],
            shadow_sampler=self.live.sample if self.live is not None else None,
            on_cancel=metrics.cancelled_images.labels(self.name, self.version).inc,
            coming=self._coming,
        )
        self.declare_metrics()

    def declare_metrics(self) -> None:
        """Create this version's series and make this engine their owner (`ServiceMetrics.forget_model`):
        at load, and again when a replacement of the same version failed and this engine serves on."""
        metrics, modes = self._metrics, list(self.manifest.modes)
        metrics.declare_model(self.name, self.version, self.manifest.num_exits, self.memory_bytes, owner=self)
        metrics.declare_serving(
            self.name, self.version, self.runner.backend.name, self.model.precision, self.runner.device
        )
        metrics.declare_adaptation(self.name, self.version, self.manifest.num_exits, modes, self.live is not None)
        if self.controller is not None:
            point = self.controller.point
            metrics.record_operating_point(self.name, self.version, point.threshold, point.flops_fraction)
        if self.live is not None:
            thresholds = {mode: self.live.thresholds(mode) for mode in modes}
            metrics.record_live_calibration(self.name, self.version, thresholds, [])

    async def discard(self) -> None:
        """Stop an engine that never served (its load was refused) and drop the series it declared."""
        await self.stop()
        self._metrics.forget_model(self.name, self.version, owner=self)

    @classmethod
    def load(
        cls, settings: Settings, name: str, version: str, metrics: ServiceMetrics, decoder: DecodePool
    ) -> "Engine":
        """Verify a model version and open its sessions, on the backend and precision chosen for this
        machine (service/backends/choice.py); `ModelLoadError` if it cannot be served."""
        before = _rss_bytes()
        model, runner = open_runner(settings, name, version)
        memory = max(_rss_bytes() - before, 0)
        logger.info(
            "loaded model %s version %s from %s: %d exits, %s on %s, providers %s, memory %.1f MiB",
            name,
            model.path.name,
            model.path,
            runner.num_exits,
            model.precision,
            runner.backend.name,
            runner.providers,
            memory / 2**20,
        )
        return cls(model, runner, settings, metrics, memory, decoder)

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    @property
    def name(self) -> str:
        """The model folder's name: what routes, answers and metrics call this model (as Triton does; the
        manifest's own `name` stays metadata, so that an A/B copy `canary/` of a model is `canary`)."""
        return self.model.path.parent.name

    @property
    def version(self) -> str:
        """The version folder's name: what routes and metrics call this version."""
        return self.model.path.name

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator["Engine"]:
        """Hold this version for one request: `retire` waits until every holder is done."""
        self._inflight += 1
        self._idle.clear()
        try:
            yield self
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()
            self._batcher.notify()  # one fewer may be coming: a batch waiting for it need not

    def _coming(self) -> int:
        """Requests admitted whose images are not queued yet (their bodies are read or decoded now): what a
        batch waits for (the adaptive batch wait, dynadapter.service.batching)."""
        return self._inflight - self._queued_requests

    async def retire(self) -> None:
        """Stop once the requests admitted on this version have finished (new ones go elsewhere)."""
        await self._idle.wait()
        await self.stop()
        self._metrics.forget_model(self.name, self.version, owner=self)

    def warm_up(self) -> None:
        self.runner.warm_up(self.manifest.preprocessing.size, self._warm_batch_sizes)

    def start(self) -> None:
        self._batcher.start()
        if self.controller is not None:
            self._control_task = asyncio.get_running_loop().create_task(self._control(self.controller))

    async def stop(self) -> None:
        task, self._control_task = self._control_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._batcher.stop()

    def policy(
        self, threshold: float | None = None, mode: str | None = None, budget: float | None = None
    ) -> ExitPolicy:
        """The thresholds a request's knob asks for, now (dynadapter.service.exit_policy.choose_policy with
        this version's controller point and live thresholds); `PolicyError` if it cannot be honoured."""
        point = self.controller.point if self.controller is not None else None
        return choose_policy(
            self.manifest,
            threshold,
            mode,
            budget,
            operating_threshold=point.threshold if point is not None else None,
            live=self.live.thresholds if self.live is not None else None,
        )

    def observe_latency(self, seconds: float) -> None:
        """One request's time from arrival to answer (or to 504): what the latency target is about."""
        if self.controller is not None:
            self.controller.observe(perf_counter(), seconds)

    async def _control(self, controller: LatencyController) -> None:
        """Every control period: one step of the controller, and its metrics."""
        metrics, last = self._metrics, perf_counter()
        while True:
            await asyncio.sleep(controller.period_s)
            now = perf_counter()
            if controller.degraded:
                metrics.degraded_seconds.labels(self.name, self.version).inc(now - last)
            if controller.step(now, self._batcher.queue_delay_s()):
                metrics.target_violations.labels(self.name, self.version).inc()
            point = controller.point
            metrics.record_operating_point(self.name, self.version, point.threshold, point.flops_fraction)
            last = now

    def admit(self) -> AbstractAsyncContextManager[None]:
        """A place in the decode pool for reading and preparing one image; `QueueFullError` if none is free."""
        return self._decoder.admit()

    async def prepare(self, data: bytes) -> np.ndarray:
        """Bytes of an uploaded image -> the float32 [3, H, W] tensor segment 0 expects, on the decode pool."""
        return await self._decoder.run(self.manifest.preprocessing.load, data, self._max_pixels)

    async def classify(
        self, image: np.ndarray, policy: ExitPolicy, deadline: float = NO_DEADLINE, trace: ImageTrace | None = None
    ) -> ExitResult:
        """Run one prepared image through the cascade, batched with whatever else is waiting (`trace`: its
        request's span, dynadapter.service.tracing).

        `deadline`: time.perf_counter() seconds; `DeadlineError` when not even its first exit can answer
        by then. A result whose logits are not all finite is never answered (its confidence would be
        NaN): `NonFiniteOutputError` instead.
        """
        result = await self._batcher.submit(image, policy.as_array(), deadline, trace)
        if not np.isfinite(result.logits).all():
            raise NonFiniteOutputError()
        return result

    async def classify_all(
        self, images: Sequence[np.ndarray], policy: ExitPolicy, deadline: float = NO_DEADLINE
    ) -> list[ExitResult]:
        """Several prepared images, each its own job (they may leave at different exits); in input order.

        `QueueFullError` when the queue cannot take them all: then none is queued. `NonFiniteOutputError`
        (with the image's index) when the model gives non-finite scores for one of them.
        """
        if len(images) > self._batcher.free_slots():
            raise QueueFullError(self._batcher.retry_after_s())
        self._queued_requests += 1
        try:
            return list(
                await asyncio.gather(*(self._classify_at(i, image, policy, deadline) for i, image in enumerate(images)))
            )
        finally:
            self._queued_requests -= 1

    async def _classify_at(self, index: int, image: np.ndarray, policy: ExitPolicy, deadline: float) -> ExitResult:
        try:
            return await self.classify(image, policy, deadline, image_trace(index))
        except NonFiniteOutputError:
            raise NonFiniteOutputError(index) from None

    def used_gflops(self, result: ExitResult) -> float:
        """GFLOPs one image cost: up to its exit, less the gated heads it skipped."""
        return self.manifest.used_gflops(result.exit_index, result.skipped_heads)

    def _count_stage(self, stage: StageOutput) -> None:
        """Stage observer: the stage's images, time and exits, in the metrics."""
        self._metrics.record_stage(self.name, self.version, stage, self.manifest)

    def _calibrate_live(self, stage: StageOutput) -> None:
        """Stage observer: the shadowed images' traces to live calibration, and its thresholds when rechosen."""
        if self.live is None:
            return
        rechosen = [self.live.observe(trace) for trace in stage.shadows.values()]
        if any(rechosen):
            live = self.live
            thresholds = {mode: live.thresholds(mode) for mode in self.manifest.modes}
            agreement = [live.agreement(k) for k in range(self.manifest.num_exits - 1)]
            self._metrics.record_live_calibration(self.name, self.version, thresholds, agreement)


def _live_calibrator(manifest: Manifest, settings: Settings) -> LiveCalibrator | None:
    if settings.live_calibration <= 0:
        return None
    return LiveCalibrator(
        manifest,
        fraction=settings.live_calibration,
        epsilon=settings.live_calibration_epsilon,
        every=settings.live_calibration_every,
        window=settings.live_calibration_window,
    )


def latency_controller(manifest: Manifest, settings: Settings) -> LatencyController | None:
    """The latency controller of one model version; `ModelLoadError` when its floor means nothing for it."""
    if settings.target_p95_ms is None:
        return None
    try:
        floor = accuracy_floor(manifest, settings.accuracy_floor)
    except ValueError as err:
        raise ModelLoadError(f"model {manifest.name}: {err}") from None
    curve = operating_curve(manifest, manifest.modes[DEFAULT_MODE], floor)
    return LatencyController(curve, settings.target_p95_ms / 1000, settings.control_period_s)
