"""The model being served: a verified model version, its segment sessions and its micro-batcher.

The hooks LitServe would name setup (`load`, `warm_up`), decode (`prepare`) and predict
(`classify`) live here; HTTP concerns stay in `dynadapter.service.routes`.
"""

import logging

import numpy as np

from dynadapter.contract.model_repository import Manifest, ModelVersion
from dynadapter.service.backends.choice import open_runner
from dynadapter.service.batching import MicroBatcher
from dynadapter.service.exit_policy import ExitPolicy, resolve_policy
from dynadapter.service.metrics import ServiceMetrics
from dynadapter.service.segment_runner import ExitResult, SegmentRunner, StageOutput
from dynadapter.service.settings import Settings

logger = logging.getLogger(__name__)


class Engine:
    def __init__(self, model: ModelVersion, runner: SegmentRunner, settings: Settings, metrics: ServiceMetrics) -> None:
        self.model = model
        self.runner = runner
        self._metrics = metrics
        self._max_pixels = settings.max_pixels
        self._warm_batch_sizes = {1, settings.max_batch_size}
        self._batcher = MicroBatcher(
            runner,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
            on_stage=self._record_stage,
        )
        metrics.declare_model(self.name, self.manifest.num_exits)
        metrics.declare_serving(self.name, runner.backend, model.precision, runner.device)

    @classmethod
    def load(cls, settings: Settings, metrics: ServiceMetrics) -> "Engine":
        """Verify the model version and open its sessions; `ModelLoadError` if it cannot be served."""
        model, runner = open_runner(settings)  # backend and precision: service/backends/choice.py
        logger.info(
            "loaded model %s version %s from %s: %d exits, %s %s, providers %s",
            model.manifest.name,
            model.manifest.version,
            model.path,
            runner.num_exits,
            model.precision,
            runner.backend,
            runner.providers,
        )
        return cls(model, runner, settings, metrics)

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    @property
    def name(self) -> str:
        return self.manifest.name

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

    def prepare(self, data: bytes) -> np.ndarray:
        """Bytes of an uploaded image -> the float32 [3, H, W] tensor segment 0 expects."""
        return self.manifest.preprocessing.load(data, self._max_pixels)

    async def classify(self, image: np.ndarray, policy: ExitPolicy) -> ExitResult:
        """Run one prepared image through the cascade, batched with whatever else is waiting."""
        return await self._batcher.submit(image, policy.as_array())

    def _record_stage(self, stage: StageOutput) -> None:
        self._metrics.record_stage(self.name, stage, self.manifest)
