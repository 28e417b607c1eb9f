"""Prometheus exposition of this app's registry."""

from fastapi import APIRouter, Response

from service.deps import StateDep
from service.metrics import EXPOSITION_CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.exposition(), media_type=EXPOSITION_CONTENT_TYPE)
