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

import numpy as np

from dynadapter.contract.model_repository import Manifest, ModelVersion
from dynadapter.service.backends.choice import open_runner
from dynadapter.service.batching import MicroBatcher, QueueFullError
from dynadapter.service.decoding import DecodePool
from dynadapter.service.errors import ApiError
from dynadapter.service.exit_policy import ExitPolicy, resolve_policy
from dynadapter.service.metrics import ServiceMetrics
from dynadapter.service.segment_runner import ExitResult, SegmentRunner, StageOutput
from dynadapter.service.settings import Settings

logger = logging.getLogger(__name__)


def _rss_bytes() -> int:
    """This process's resident memory now (Linux /proc); 0 where there is no /proc."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


class Engine:
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
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._max_pixels = settings.max_pixels
        self._decoder = decoder  # the process's bounded decode pool, shared by every model
        self._warm_batch_sizes = {1, settings.max_batch_size}
        self._batcher = MicroBatcher(
            runner,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
            on_stage=self._record_stage,
        )
        metrics.declare_model(self.name, self.version, self.manifest.num_exits, memory_bytes)
        metrics.declare_serving(self.name, self.version, runner.backend, model.precision, runner.device)

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
            model.manifest.name,
            model.path.name,
            model.path,
            runner.num_exits,
            model.precision,
            runner.backend,
            runner.providers,
            memory / 2**20,
        )
        return cls(model, runner, settings, metrics, memory, decoder)

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    @property
    def name(self) -> str:
        return self.manifest.name

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

    async def retire(self) -> None:
        """Stop once the requests admitted on this version have finished (new ones go elsewhere)."""
        await self._idle.wait()
        await self.stop()
        self._metrics.forget_model(self.name, self.version)

    def warm_up(self) -> None:
        self.runner.warm_up(self.manifest.preprocessing.size, self._warm_batch_sizes)

    def start(self) -> None:
        self._batcher.start()

    async def stop(self) -> None:
        await self._batcher.stop()

    def policy(
        self, threshold: float | None = None, mode: str | None = None, budget: float | None = None
    ) -> ExitPolicy:
        return resolve_policy(self.manifest, threshold=threshold, mode=mode, budget=budget)

    def admit(self) -> AbstractAsyncContextManager[None]:
        """A place in the decode pool for reading and preparing one image; `QueueFullError` if none is free."""
        return self._decoder.admit()

    async def prepare(self, data: bytes) -> np.ndarray:
        """Bytes of an uploaded image -> the float32 [3, H, W] tensor segment 0 expects, on the decode pool."""
        return await self._decoder.run(self.manifest.preprocessing.load, data, self._max_pixels)

    async def classify(self, image: np.ndarray, policy: ExitPolicy) -> ExitResult:
        """Run one prepared image through the cascade, batched with whatever else is waiting.

        A result whose logits are not all finite is never answered (its confidence would be NaN):
        ApiError 500 ``non_finite_output`` instead.
        """
        result = await self._batcher.submit(image, policy.as_array())
        if not np.isfinite(result.logits).all():
            raise ApiError(500, "non_finite_output", "the model gave non-finite scores for this image")
        return result

    async def classify_all(self, images: Sequence[np.ndarray], policy: ExitPolicy) -> list[ExitResult]:
        """Several prepared images, each its own job (they may leave at different exits); in input order.

        `QueueFullError` when the queue cannot take them all: then none is queued.
        """
        if len(images) > self._batcher.free_slots():
            raise QueueFullError(self._batcher.retry_after_s())
        return list(await asyncio.gather(*(self.classify(image, policy) for image in images)))

    def used_gflops(self, result: ExitResult) -> float:
        """GFLOPs one image cost: up to its exit, less the gated heads it skipped."""
        return self.manifest.used_gflops(result.exit_index, result.skipped_heads)

    def _record_stage(self, stage: StageOutput) -> None:
        self._metrics.record_stage(self.name, self.version, stage, self.manifest)
