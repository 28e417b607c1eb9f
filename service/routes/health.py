"""Liveness and readiness probes (open, never behind API keys)."""

from fastapi import APIRouter

from dynadapter.service.deps import StateDep
from dynadapter.service.errors import not_ready
from dynadapter.service.schemas import Status

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Status:
    """200 while the process lives."""
    return Status(status="ok")


@router.get("/readyz", responses={503: {"description": "Model not loaded or not warmed yet"}})
async def readyz(state: StateDep) -> Status:
    """200 only once the models of the start are loaded and warm, and while every model that should serve
    does (strict, as Triton's default): each model listed or in the repository that was not explicitly
    unloaded, and the default model if set; with none served, 503 as /classify would answer."""
    if not state.ready:
        raise not_ready()
    reason = state.registry.unready_reason()
    if reason is not None:
        raise not_ready(reason)
    return Status(status="ready")


# Uptime probes use HEAD: the GET's status and headers without a body (not in the OpenAPI schema).
for _path, _probe in (("/healthz", healthz), ("/readyz", readyz)):
    router.add_api_route(_path, _probe, methods=["HEAD"], include_in_schema=False)
