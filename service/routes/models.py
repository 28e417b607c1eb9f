"""GET /v1/models: every model version served, its exits, costs, calibrated modes and memory."""

from fastapi import APIRouter, Depends

from dynadapter.service.deps import RegistryDep, require_api_key
from dynadapter.service.engine import Engine
from dynadapter.service.schemas import ExitInfo, ModeInfo, ModelInfo, ModelList, ServingInfo

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("/v1/models")
async def list_models(registry: RegistryDep) -> ModelList:
    """One entry per served version, models by name, versions highest first."""
    return ModelList(models=[describe(engine) for name in registry.names() for engine in registry.engines(name)])


def describe(engine: Engine) -> ModelInfo:
    manifest = engine.manifest
    return ModelInfo(
        name=engine.name,
        version=engine.version,
        num_classes=manifest.num_classes,
        labels=manifest.labels,
        exits=[
            ExitInfo(
                index=segment.index,
                after_block=segment.after_block,
                gflops=segment.gflops,
                cumulative_gflops=segment.cumulative_gflops,
                head_gflops=segment.head_gflops,
            )
            for segment in manifest.segments
        ],
        gflops_full=manifest.gflops_full,
        modes={
            name: ModeInfo(
                threshold=mode.threshold,
                thresholds=list(mode.thresholds) if mode.thresholds is not None else None,
                accuracy=mode.accuracy,
                flops_fraction=mode.flops_fraction,
                live_thresholds=list(engine.live.thresholds(name)) if engine.live is not None else None,
            )
            for name, mode in manifest.modes.items()
        },
        providers=engine.runner.providers,
        memory_bytes=engine.memory_bytes,
        serving=ServingInfo(
            backend=engine.runner.backend.name, precision=engine.model.precision, device=engine.runner.device
        ),
    )
