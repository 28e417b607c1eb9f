"""Prometheus exposition of this app's registry."""

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from dynadapter.service.deps import StateDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


# HEAD: the GET's status and headers without a body, for uptime probes (not in the OpenAPI schema).
router.add_api_route("/metrics", metrics, methods=["HEAD"], response_class=Response, include_in_schema=False)
