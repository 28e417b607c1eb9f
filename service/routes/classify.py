"""POST /classify: images in (one, or several `file` parts), the answer of the first exit confident enough out."""

from time import perf_counter
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from pydantic import ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from dynadapter.contract import softmax
from dynadapter.service import data_plane
from dynadapter.service.deps import RegistryDep, StateDep, require_api_key
from dynadapter.service.engine import Engine
from dynadapter.service.errors import bad_parameter, too_many_images, unsupported_media_type
from dynadapter.service.exit_policy import ExitPolicy, PolicyError
from dynadapter.service.routes.http import channel
from dynadapter.service.schemas import ClassifyResponse, ClassScore, ExitTaken, GFlops, Knob
from dynadapter.service.segment_runner import ExitResult

router = APIRouter(tags=["inference"], dependencies=[Depends(require_api_key)])

# The body is read by hand (multipart field `file` or a raw image/* body), so describe it for OpenAPI.
_BINARY = {"type": "string", "format": "binary"}
_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"oneOf": [_BINARY, {"type": "array", "items": _BINARY}]}},
                    "required": ["file"],
                }
            },
            "image/*": {"schema": _BINARY},
        },
    }
}


class ClassifyParams(Knob):
    """Query parameters: the knob, `top_k`, `deadline_ms` (at most the setting request_timeout_s), and which
    model answers: `model` (none: the default model) at `version` (none: its highest served one)."""

    # A misspelled knob (`treshold=0.5`) must not be answered at the default one, as OIP refuses it too.
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, min_length=1)
    version: str | None = Field(default=None, pattern=r"^[0-9]+$")
    top_k: int = Field(default=1, ge=1)
    deadline_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)


@router.post(
    "/classify",
    openapi_extra=_REQUEST_BODY,
    responses={
        400: {"description": "Empty, undecodable or non-finite-scoring image, or a malformed multipart body"},
        401: {"description": "Missing or wrong API key"},
        404: {"description": "Model or version not served"},
        413: {"description": "Body or image too large, or too many images"},
        415: {"description": "Unsupported content type"},
        422: {"description": "Bad query parameter"},
        499: {"description": "The client closed the connection before its answer (its images are cancelled)"},
        503: {"description": "Not ready, overloaded, or cut short by shutdown (see Retry-After)"},
        504: {"description": "Deadline passed before the first exit could answer"},
    },
)
async def classify(
    request: Request, params: Annotated[ClassifyParams, Query()], registry: RegistryDep, state: StateDep
) -> ClassifyResponse | list[ClassifyResponse]:
    """One image (raw image/* body or one `file` part): one answer. Several `file` parts: a list, in their order."""
    start = perf_counter()
    engine = registry.get(params.model, params.version)
    if params.top_k > engine.manifest.num_classes:
        raise bad_parameter(f"top_k: must be at most {engine.manifest.num_classes}, the number of classes")
    try:
        policy = engine.policy(params.threshold, params.mode, params.budget)
    except PolicyError as err:
        raise bad_parameter(str(err)) from None

    async def read() -> data_plane.Job:
        images = await _read_images(request, state.settings.max_images_per_request)
        return data_plane.Job(images=images, policy=policy, knob=params)

    timeout_s = state.settings.request_timeout_s
    if params.deadline_ms is not None:
        timeout_s = min(timeout_s, params.deadline_ms / 1000)
    _, results = await data_plane.run(channel(request), engine, read, timeout_s)
    latency_s = perf_counter() - start
    answers = [_response(engine, result, policy, params.top_k, latency_s) for result in results]
    return answers if len(results) > 1 else answers[0]


async def _read_images(request: Request, limit: int) -> list[bytes]:
    """The encoded images of the body: a raw image/* body, or every multipart part named `file`, in order."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type.startswith("image/"):
        return [await request.body()]
    if media_type != "multipart/form-data":
        raise unsupported_media_type(content_type or "(none)")
    try:
        form = await request.form(max_files=limit)
    except HTTPException as err:
        # Starlette's parser stops at max_files with a 400; past the limit is this API's 413.
        if "Too many files" in str(err.detail):
            raise too_many_images(limit) from None
        raise
    try:
        uploads = form.getlist("file")
        if not uploads:
            raise bad_parameter("file: the multipart body has no complete part named 'file' (the image goes there)")
        if not all(isinstance(upload, UploadFile) for upload in uploads):
            raise bad_parameter("file: each 'file' part must be a file upload (with a filename), not a text field")
        return [await upload.read() for upload in uploads if isinstance(upload, UploadFile)]
    finally:
        await form.close()


def _response(engine: Engine, result: ExitResult, policy: ExitPolicy, top_k: int, latency_s: float) -> ClassifyResponse:
    manifest = engine.manifest
    probabilities = softmax(result.logits)
    ranked = np.argsort(-probabilities, kind="stable")[:top_k]
    scores = [ClassScore(label=manifest.labels[i], class_id=int(i), confidence=float(probabilities[i])) for i in ranked]
    segment = manifest.segments[result.exit_index]
    used, full = engine.used_gflops(result), manifest.gflops_full
    return ClassifyResponse(
        model=engine.name,
        version=engine.version,
        label=scores[0].label,
        class_id=scores[0].class_id,
        confidence=scores[0].confidence,
        top_k=scores,
        exit=ExitTaken(index=result.exit_index, count=manifest.num_exits, after_block=segment.after_block),
        gflops=GFlops(used=used, full=full, saved=max(full - used, 0.0)),
        threshold=list(policy.reported) if isinstance(policy.reported, tuple) else policy.reported,
        exit_reason=result.reason,
        latency_ms=round(latency_s * 1000, 3),
    )
