"""POST /classify: one image in, the answer of the first exit confident enough out."""

import asyncio
from time import perf_counter
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field, model_validator
from starlette.datastructures import UploadFile

from dynadapter.service.batching import BatcherClosedError, QueueFullError
from dynadapter.service.deps import EngineDep, StateDep, require_api_key
from dynadapter.service.engine import Engine
from dynadapter.service.errors import (
    bad_parameter,
    deadline_exceeded,
    not_ready,
    overloaded,
    unsupported_media_type,
)
from dynadapter.service.exit_policy import ExitPolicy, PolicyError
from dynadapter.service.schemas import ClassifyResponse, ClassScore, ExitTaken, GFlops
from dynadapter.service.segment_runner import ExitResult, softmax

router = APIRouter(tags=["inference"], dependencies=[Depends(require_api_key)])

# The body is read by hand (multipart field `file` or a raw image/* body), so describe it for OpenAPI.
_BINARY = {"type": "string", "format": "binary"}
_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": _BINARY}, "required": ["file"]}
            },
            "image/*": {"schema": _BINARY},
        },
    }
}


class ClassifyParams(BaseModel):
    """Query parameters; at most one of threshold, mode and budget (none: mode=balanced)."""

    threshold: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    mode: Literal["fast", "balanced", "accurate"] | None = None
    budget: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    top_k: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _one_knob(self) -> "ClassifyParams":
        if sum(knob is not None for knob in (self.threshold, self.mode, self.budget)) > 1:
            raise ValueError("give at most one of threshold, mode and budget")
        return self


@router.post(
    "/classify",
    openapi_extra=_REQUEST_BODY,
    responses={
        400: {"description": "Empty or undecodable image"},
        401: {"description": "Missing or wrong API key"},
        413: {"description": "Body or image too large"},
        415: {"description": "Unsupported content type"},
        422: {"description": "Bad query parameter"},
        503: {"description": "Not ready, or overloaded (see Retry-After)"},
        504: {"description": "Deadline passed"},
    },
)
async def classify(
    request: Request, params: Annotated[ClassifyParams, Query()], engine: EngineDep, state: StateDep
) -> ClassifyResponse:
    start = perf_counter()
    if params.top_k > engine.manifest.num_classes:
        raise bad_parameter(f"top_k: must be at most {engine.manifest.num_classes}, the number of classes")
    try:
        policy = engine.policy(params.threshold, params.mode, params.budget)
    except PolicyError as err:
        raise bad_parameter(str(err)) from None
    timeout_s = state.settings.request_timeout_s
    try:
        result = await asyncio.wait_for(_infer(request, engine, policy), timeout_s)
    except asyncio.TimeoutError:
        raise deadline_exceeded(timeout_s) from None
    return _response(engine, result, policy, params.top_k, latency_s=perf_counter() - start)


async def _infer(request: Request, engine: Engine, policy: ExitPolicy) -> ExitResult:
    try:
        # Admitted before the body is read, so that bodies and decodes in memory stay bounded;
        # decoding runs on the engine's decode pool, off the event loop.
        async with engine.admit():
            image = await engine.prepare(await _read_image(request))
        return await engine.classify(image, policy)
    except QueueFullError as err:
        raise overloaded(err.retry_after_s) from None
    except BatcherClosedError:
        raise not_ready() from None


async def _read_image(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type.startswith("image/"):
        return await request.body()
    if media_type != "multipart/form-data":
        raise unsupported_media_type(content_type or "(none)")
    async with request.form(max_files=1) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise bad_parameter("file: the multipart body needs the image in a field named 'file'")
        return await upload.read()


def _response(engine: Engine, result: ExitResult, policy: ExitPolicy, top_k: int, latency_s: float) -> ClassifyResponse:
    manifest = engine.manifest
    probabilities = softmax(result.logits)
    ranked = np.argsort(-probabilities, kind="stable")[:top_k]
    scores = [ClassScore(label=manifest.labels[i], class_id=int(i), confidence=float(probabilities[i])) for i in ranked]
    segment = manifest.segments[result.exit_index]
    used, full = manifest.used_gflops(result.exit_index, result.skipped_heads), manifest.gflops_full
    return ClassifyResponse(
        model=manifest.name,
        version=manifest.version,
        label=scores[0].label,
        class_id=scores[0].class_id,
        confidence=scores[0].confidence,
        top_k=scores,
        exit=ExitTaken(index=result.exit_index, count=manifest.num_exits, after_block=segment.after_block),
        gflops=GFlops(used=used, full=full, saved=max(full - used, 0.0)),
        threshold=list(policy.reported) if isinstance(policy.reported, tuple) else policy.reported,
        latency_ms=round(latency_s * 1000, 3),
    )
