"""The Open Inference Protocol v2 REST routes (KServe, Triton), with Triton's model configuration.

Health routes are open; the model routes sit behind the API key like /classify. Every route that
names a model takes an optional `/versions/{version}` (none: the highest served version).
Errors have the protocol's shape `{"error": "message"}` (dynadapter.service.errors).
docs/protocol-oip.md has curl and tritonclient examples.
"""

import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import Field, ValidationError

from dynadapter.contract import softmax
from dynadapter.service import data_plane, oip
from dynadapter.service.deps import RegistryDep, StateDep, require_api_key
from dynadapter.service.engine import Engine
from dynadapter.service.errors import bad_request
from dynadapter.service.exit_policy import PolicyError
from dynadapter.service.routes.http import channel
from dynadapter.service.schemas import Knob
from dynadapter.service.segment_runner import ExitResult

health = APIRouter(tags=["oip"])
models = APIRouter(tags=["oip"], dependencies=[Depends(require_api_key)])
router = APIRouter()

EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "schedule_policy"]
PLATFORM = "dynadapter_onnx_cascade"
_VERSIONED = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")

#: The infer route's path, capturing the model's name and its version (None: the highest served): what
#: the app's middleware matches before a route runs (body limits, metrics labels).
INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")


class InferParameters(Knob, extra="forbid", strict=True):
    """The request's `parameters`: the knob, Triton's `timeout` (microseconds, an unsigned 64-bit integer as
    in Triton; 0, as in Triton: none of the request's own, so the service's request_timeout_s) and
    `binary_data_output` (every output in binary unless an output says otherwise). Strict: JSON types as
    given, so `true` is no number and `"1"` no boolean."""

    timeout: int = Field(default=0, ge=0, le=2**64 - 1)
    binary_data_output: bool = False


@health.get("/v2")
async def server_metadata() -> oip.ServerMetadata:
    try:
        own_version = package_version("dyn-adapter")
    except PackageNotFoundError:  # run from a checkout that was never installed
        own_version = "unknown"
    return oip.ServerMetadata(name="dyn-adapter", version=own_version, extensions=EXTENSIONS)


@health.get("/v2/health/live")
async def live() -> dict[str, bool]:
    """200 while the process lives."""
    return {"live": True}


@health.get("/v2/health/ready", responses={503: {"description": "Models not loaded or not warmed yet"}})
async def ready(state: StateDep) -> JSONResponse:
    """200 `{"ready": true}` once every model of the start is loaded and warm, and while every model that
    should serve does (as /readyz); else 503 `{"ready": false, "error": why}`."""
    if not state.ready:
        return JSONResponse({"ready": False, "error": "the models are not loaded and warmed yet"}, status_code=503)
    reason = state.registry.unready_reason()
    if reason is not None:
        return JSONResponse({"ready": False, "error": reason}, status_code=503)
    return JSONResponse({"ready": True})


# Uptime probes use HEAD: the GET's status and headers without a body (not in the OpenAPI schema).
for _path, _probe in (("/v2", server_metadata), ("/v2/health/live", live), ("/v2/health/ready", ready)):
    health.add_api_route(_path, _probe, methods=["HEAD"], include_in_schema=False)


def model_metadata(registry: RegistryDep, name: str, version: str | None = None) -> oip.ModelMetadata:
    engine = registry.get(name, version)
    versions = [e.version for e in registry.engines(name)] if version is None else [engine.version]
    return oip.ModelMetadata(
        name=name,
        versions=versions,
        platform=PLATFORM,
        inputs=oip.model_inputs(engine.manifest),
        outputs=oip.model_outputs(engine.manifest),
    )


def model_ready(registry: RegistryDep, name: str, version: str | None = None) -> dict[str, Any]:
    # Served versions are warm by construction (the registry swaps them in only once warm).
    engine = registry.get(name, version)
    return {"name": name, "version": engine.version, "ready": True}


def _model_config(registry: RegistryDep, name: str, version: str | None = None) -> dict[str, Any]:
    """Triton's model configuration, as far as tritonclient and perf_analyzer read it."""
    engine = registry.get(name, version)

    return {
        "name": name,
        "platform": PLATFORM,
        "backend": "dynadapter",
        "version_policy": registry.policy.as_triton(),
        "max_batch_size": 0,  # the batch axis is in the shapes: [-1, ...]
        # Either input does (one per request), so both are optional.
        "input": _config_tensors(oip.model_inputs(engine.manifest), optional=True),
        "output": _config_tensors(oip.model_outputs(engine.manifest), optional=False),
        "dynamic_batching": {"max_queue_delay_microseconds": int(registry.settings.max_wait_ms * 1000)},
        "parameters": {"num_exits": {"string_value": str(engine.manifest.num_exits)}},
    }


def _config_tensors(metadata: list[oip.TensorMetadata], optional: bool) -> list[dict[str, Any]]:
    return [
        {"name": t.name, "data_type": _TRITON_TYPES[t.datatype], "dims": t.shape}
        | ({"optional": True} if optional else {})
        for t in metadata
    ]


_TRITON_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "INT32": "TYPE_INT32"}

for path in _VERSIONED:
    models.add_api_route(path, model_metadata, methods=["GET"], response_model=oip.ModelMetadata)
    models.add_api_route(path + "/ready", model_ready, methods=["GET"])
    models.add_api_route(path + "/config", _model_config, methods=["GET"])


@dataclass(frozen=True, kw_only=True)
class OipJob(data_plane.Job):
    """An OIP request once read: its message, and the outputs it wants (name, binary, classification k)."""

    message: oip.InferenceRequest
    wanted: list[tuple[str, bool, int]]


def read_job(message: oip.InferenceRequest, binary: bytes, engine: Engine, max_images: int) -> OipJob:
    """What an OIP request (REST's body, or gRPC's message in REST's form) asks of `engine`: its images,
    exit policy, own deadline and outputs; 400 for a bad parameter, tensor or output, 413 past `max_images`."""
    parameters = read_parameters(message)
    try:
        policy = engine.policy(parameters.threshold, parameters.mode, parameters.budget)
    except PolicyError as err:
        raise bad_request(str(err)) from None
    images = oip.read_input(message, binary, engine.manifest)
    data_plane.check_count(len(images), max_images)
    wanted = requested_outputs(message, parameters, engine)
    return OipJob(
        images=images,
        policy=policy,
        timeout_s=parameters.timeout / 1e6 if parameters.timeout else None,
        input_name=message.inputs[0].name,  # read_input allows exactly one
        knob=parameters,
        message=message,
        wanted=wanted,
    )


async def infer(
    request: Request, registry: RegistryDep, state: StateDep, name: str, version: str | None = None
) -> Response:
    """Classify the images of one OIP request; see the module docstring of dynadapter.service.oip."""
    engine = registry.get(name, version)

    async def read() -> OipJob:
        # The parameters (knob, timeout) are inside the body: read only once admitted, under the deadline.
        body = await request.body()
        message, binary = oip.parse_request(body, request.headers.get(oip.HEADER_LENGTH))
        return read_job(message, binary, engine, state.settings.max_images_per_request)

    job, results = await data_plane.run(channel(request), engine, read, state.settings.request_timeout_s)
    content, headers = _encode(job.message, engine, results, job.wanted)
    return Response(content, headers=headers)


# The body is read by hand (JSON, or JSON + binary tensors), so describe it for OpenAPI; its models go
# into the schema's components (`add_schemas`), where the references point.
_REQUEST_SCHEMA = oip.InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
REQUEST_SCHEMAS = {"InferenceRequest": _REQUEST_SCHEMA} | _REQUEST_SCHEMA.pop("$defs")
_INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
            oip.BINARY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def add_schemas(app: FastAPI) -> None:
    """Put the OIP request's models into the app's OpenAPI components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        schema.setdefault("components", {}).setdefault("schemas", {}).update(REQUEST_SCHEMAS)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


for path in _VERSIONED:
    models.add_api_route(
        path + "/infer",
        infer,
        methods=["POST"],
        openapi_extra=_INFER_DOC,
        responses={
            200: {"model": oip.InferenceResponse, "description": "JSON, or JSON + binary outputs"},
            400: {"description": "Malformed request, tensor or parameter, or a non-finite-scoring input"},
            401: {"description": "Missing or wrong API key"},
            404: {"description": "Model or version not served"},
            413: {"description": "Body or image too large, or too many images"},
            499: {"description": "The client closed the connection before its answer (its images are cancelled)"},
            503: {"description": "Not ready, overloaded, or cut short by shutdown (see Retry-After)"},
            504: {"description": "Deadline passed"},
        },
    )

router.include_router(health)
router.include_router(models)


def read_parameters(message: oip.InferenceRequest) -> InferParameters:
    try:
        return InferParameters.model_validate(message.parameters or {})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(item) for item in first["loc"])
        raise bad_request(
            f"parameters: {where + ': ' if where else ''}{first['msg'].removeprefix('Value error, ')}"
        ) from None


def requested_outputs(
    message: oip.InferenceRequest, parameters: InferParameters, engine: Engine
) -> list[tuple[str, bool, int]]:
    """(name, binary, classification k or 0) of each output to send; every output when none is named."""
    if message.outputs is None:
        return [(name, parameters.binary_data_output, 0) for name in oip.OUTPUTS]
    wanted: list[tuple[str, bool, int]] = []
    for output in message.outputs:
        if output.name not in oip.OUTPUTS:
            raise bad_request(f"unknown output {output.name!r}; this model has {', '.join(oip.OUTPUTS)}")
        if any(name == output.name for name, _, _ in wanted):
            # One tensor per name in the answer: a second request of it would be answered twice or not at all.
            raise bad_request(f"output {output.name!r} is requested more than once")
        options = output.parameters or {}
        binary = options.get("binary_data", parameters.binary_data_output)
        k = options.get("classification", 0)
        if not isinstance(binary, bool):
            raise bad_request(f"output {output.name!r}: binary_data must be true or false")
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= engine.manifest.num_classes:
            raise bad_request(
                f"output {output.name!r}: classification must be an integer from 0 to {engine.manifest.num_classes}"
            )
        if k and output.name != "probabilities":
            raise bad_request("classification applies to the output 'probabilities' only")
        wanted.append((output.name, binary, k))
    return wanted


def answer_tensors(
    engine: Engine, results: list[ExitResult], wanted: list[tuple[str, bool, int]]
) -> list[tuple[str, np.ndarray]]:
    """The `wanted` outputs (see `requested_outputs`) of `results`, in order: (name, values); what REST and
    gRPC answer alike."""
    probabilities = softmax(np.stack([r.logits for r in results])).astype(np.float32)
    tensors = {
        "probabilities": probabilities,
        "exit_index": np.array([r.exit_index for r in results], dtype=np.int32),
        "gflops": np.array([engine.used_gflops(r) for r in results], dtype=np.float32),
        "exit_reason": np.array([r.reason for r in results], dtype=object),
    }
    return [
        (name, oip.classification(probabilities, k, engine.manifest.labels) if k else tensors[name])
        for name, _, k in wanted
    ]


def _encode(
    message: oip.InferenceRequest, engine: Engine, results: list[ExitResult], wanted: list[tuple[str, bool, int]]
) -> tuple[bytes, dict[str, str]]:
    outputs, binary = [], []
    for (name, values), (_, as_binary, _) in zip(answer_tensors(engine, results, wanted), wanted, strict=True):
        output, raw = oip.tensor_output(name, values, as_binary)
        outputs.append(output)
        binary.extend([raw] if raw is not None else [])
    response = oip.InferenceResponse(
        model_name=engine.name, model_version=engine.version, id=message.id, outputs=outputs
    )
    return oip.encode_response(response, binary)
