"""The model being served: a verified model version, its segment sessions and its micro-batcher.

The hooks LitServe would name setup (`load`, `warm_up`), decode (`prepare`) and predict
(`classify`) live here; HTTP concerns stay in `dynadapter.service.routes`.
"""

import logging

import numpy as np

from dynadapter.contract.model_repository import Manifest, ModelVersion, load_model
from dynadapter.service.batching import MicroBatcher
from dynadapter.service.errors import ApiError
from dynadapter.service.exit_policy import ExitPolicy, resolve_policy
from dynadapter.service.metrics import ServiceMetrics
from dynadapter.service.segment_runner import ExitResult, SegmentRunner, StageOutput, select_providers
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

    @classmethod
    def load(cls, settings: Settings, metrics: ServiceMetrics) -> "Engine":
        """Verify the model version and open its sessions; `ModelLoadError` if it cannot be served."""
        model = load_model(settings.model_repo, settings.model_name, settings.model_version)
        runner = SegmentRunner(
            model.segment_paths,
            select_providers(settings.providers),
            intra_op_threads=settings.intra_op_threads,
            num_classes=model.manifest.num_classes,
        )
        logger.info(
            "loaded model %s version %s from %s: %d exits, providers %s",
            model.manifest.name,
            model.manifest.version,
            model.path,
            runner.num_exits,
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
        """Run one prepared image through the cascade, batched with whatever else is waiting.

        A result whose logits are not all finite is never answered (its confidence would be NaN):
        ApiError 500 ``non_finite_output`` instead.
        """
        result = await self._batcher.submit(image, policy.as_array())
        if not np.isfinite(result.logits).all():
            raise ApiError(500, "non_finite_output", "the model gave non-finite scores for this image")
        return result

    def _record_stage(self, stage: StageOutput) -> None:
        self._metrics.record_stage(self.name, stage, self.manifest)
