"""The OIP v2 gRPC service (`inference.GRPCInferenceService`), served by grpc.aio in the app's event loop.

A codec over the same data plane, registry, batcher, limits and metrics as REST (docs/architecture.md
"a transport"): ModelInfer reads its message into the REST form (codec.py) and runs
`data_plane.run`; nothing here classifies. The rules it shares with REST:

- API keys: every method but ServerLive, ServerReady and ServerMetadata needs `authorization: Bearer
  <key>` metadata when the service has keys (the REST rule, `deps.key_accepted`), else UNAUTHENTICATED.
- Limits: a message over the setting max_body_bytes is refused by gRPC itself (RESOURCE_EXHAUSTED);
  max_images_per_request, max_pixels, the decode pool and the queue as on REST.
- Deadlines: the call's gRPC deadline, when shorter than request_timeout_s, is the request's deadline
  (and the `timeout` parameter, microseconds, narrows it as on REST).
- Errors: an error's HTTP status becomes the gRPC status of `STATUS` (as KServe maps them), with the
  message as REST's; trailing metadata `dynadapter-error` carries the error's code (not_ready,
  overloaded, ...) and `retry-after` where REST sends Retry-After.
- Metrics: ModelInfer is counted in dynadapter_requests_total and the latency histogram under the HTTP
  status of the same outcome; every call in dynadapter_grpc_requests_total{method, code}.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span
from starlette.requests import ClientDisconnect

from dynadapter.contract.images import ImageDecodeError, ImageTooLargeError
from dynadapter.service import data_plane
from dynadapter.service.deps import ServiceState, key_accepted
from dynadapter.service.errors import ApiError, not_ready, unauthorized
from dynadapter.service.grpc import codec
from dynadapter.service.grpc.protocol import METHODS, SERVICE, message
from dynadapter.service.middleware import ModelLabel
from dynadapter.service.registry import ModelRegistry, checked
from dynadapter.service.routes import oip as oip_routes
from dynadapter.service.routes.repository import load_model, unload_model
from dynadapter.service.tracing import Tracing, set_grpc_status

logger = logging.getLogger(__name__)

Code = grpc.StatusCode
#: An error's HTTP status -> its gRPC status (KServe's and Triton's mapping of the same failures).
STATUS = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    404: Code.NOT_FOUND,
    408: Code.DEADLINE_EXCEEDED,
    413: Code.RESOURCE_EXHAUSTED,
    422: Code.INVALID_ARGUMENT,
    499: Code.CANCELLED,
    503: Code.UNAVAILABLE,
    504: Code.DEADLINE_EXCEEDED,
}
OPEN_METHODS = frozenset({"ServerLive", "ServerReady", "ServerMetadata"})  # as REST's health routes


@dataclass
class _Call:
    """One call's metrics label: the model version that serves it, once known."""

    label: ModelLabel = ("unknown", "")


Handler = Callable[[Any, grpc.aio.ServicerContext, _Call], Awaitable[Any]]


class InferenceServicer:
    """The methods of `inference.GRPCInferenceService` over one app's state (settings, registry, metrics)."""

    def __init__(self, state: ServiceState, tracing: Tracing) -> None:
        self.state = state
        self.tracing = tracing

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's generic handler: each method's coroutine with its message classes."""
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._wrap(name, getattr(self, name)),
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )
            for name, (request, response) in METHODS.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _wrap(self, method: str, handler: Handler) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        metrics = self.state.metrics
        infer = method == "ModelInfer"

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if not infer:  # only inference is traced, as on REST
                return await serve(request, context, trace.INVALID_SPAN)
            with self.tracing.grpc_span(method, context.invocation_metadata()) as span:
                return await serve(request, context, span)

        async def serve(request: Any, context: grpc.aio.ServicerContext, span: Span) -> Any:
            started, this = perf_counter(), _Call(self._guess(request) if infer else ("unknown", ""))
            inflight = metrics.inflight.labels(*this.label) if infer else None
            code, status = Code.OK, 200
            if inflight is not None:
                inflight.inc()
            try:
                if method not in OPEN_METHODS:
                    self._authenticate(context)
                return await handler(request, context, this)
            except asyncio.CancelledError:  # the client went away (or cancelled): its work is cancelled too
                code, status = Code.CANCELLED, 499
                raise
            except Exception as err:  # noqa: BLE001 - every failure becomes a status; a bug is logged as one
                code, status, text, trailers = _status(err, method)
                context.set_trailing_metadata(trailers)
                await context.abort(code, text)
            finally:
                metrics.record_grpc(method, code.name)
                set_grpc_status(span, code.value[0])
                if inflight is not None:
                    inflight.dec()
                    metrics.record_request(*this.label, status, perf_counter() - started)

        return call

    def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        value = dict(context.invocation_metadata() or ()).get("authorization", "")
        scheme, _, token = str(value).partition(" ")
        if not key_accepted(self.state.settings.api_keys, token.strip() if scheme.lower() == "bearer" else ""):
            raise unauthorized()

    def _registry(self) -> ModelRegistry:
        if not self.state.ready:  # as REST's get_registry
            raise not_ready()
        return self.state.registry

    def _guess(self, request: Any) -> ModelLabel:
        """The served version a ModelInfer names, for calls refused before it runs (as REST's middleware)."""
        try:
            engine = self._registry().get(request.model_name, request.model_version or None)
        except ApiError:
            return ("unknown", "")
        return (engine.name, engine.version)

    # Health and metadata.

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext, call: _Call) -> Any:
        return message("ServerLiveResponse")(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext, call: _Call) -> Any:
        ready = self.state.ready and self.state.registry.unready_reason() is None
        return message("ServerReadyResponse")(ready=ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext, call: _Call) -> Any:
        metadata = await oip_routes.server_metadata()
        return message("ServerMetadataResponse")(**metadata.model_dump())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext, call: _Call) -> Any:
        """ready=false for a model (version) not served, as Triton; INVALID_ARGUMENT for a name no folder has."""
        registry = self._registry()
        checked(request.name, request.version or None)
        try:
            registry.get(request.name, request.version or None)
        except ApiError as err:
            if err.status_code != 404:
                raise
            return message("ModelReadyResponse")(ready=False)
        return message("ModelReadyResponse")(ready=True)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext, call: _Call) -> Any:
        metadata = oip_routes.model_metadata(self._registry(), request.name, request.version or None)
        return message("ModelMetadataResponse")(**metadata.model_dump())

    # Inference.

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext, call: _Call) -> Any:
        engine = self._registry().get(request.model_name, request.model_version or None)
        settings = self.state.settings

        async def read() -> oip_routes.OipJob:
            body, binary = codec.rest_form(request)
            return oip_routes.read_job(body, binary, engine, settings.max_images_per_request)

        timeout_s = settings.request_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:  # the client's gRPC deadline
            timeout_s = max(min(timeout_s, remaining), 0.0)

        def label(model: str, version: str) -> None:
            call.label = (model, version)

        # The message has arrived whole (no read to bound); a client that goes away cancels this coroutine.
        channel = data_plane.Channel(label=label, limit_read=lambda _: None, disconnected=_never)
        job, results = await data_plane.run(channel, engine, read, timeout_s)
        return codec.response(request, engine, results, job.wanted)

    # Triton's model repository extension.

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext, call: _Call) -> Any:
        """Every model and its versions' states (REST's /v2/repository/index); `ready`: the READY ones only."""
        entries = [e for e in self.state.registry.index() if e["state"] == "READY" or not request.ready]
        return message("RepositoryIndexResponse")(models=entries)

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext, call: _Call) -> Any:
        await load_model(self.state, request.model_name, codec.parameters(request.parameters))
        return message("RepositoryModelLoadResponse")()

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext, call: _Call) -> Any:
        await unload_model(self.state, request.model_name, codec.parameters(request.parameters))
        return message("RepositoryModelUnloadResponse")()


async def _never() -> None:
    await asyncio.Event().wait()


def _status(err: Exception, method: str) -> tuple[grpc.StatusCode, int, str, tuple[tuple[str, str], ...]]:
    """(gRPC status, HTTP status, message, trailing metadata) of a failure, as REST's handlers answer it."""
    if isinstance(err, ApiError):
        status, code, text, headers = err.status_code, err.code, err.message, err.headers or {}
    elif isinstance(err, ImageDecodeError):
        status, code, text, headers = 400, "invalid_image", str(err), {}
    elif isinstance(err, ImageTooLargeError):
        status, code, text, headers = 413, "image_too_large", str(err), {}
    elif isinstance(err, ClientDisconnect):
        status, code, text, headers = 499, "client_closed_request", "the client closed the connection", {}
    else:
        logger.error("unhandled error in gRPC %s", method, exc_info=err)
        status, code, text, headers = 500, "internal", "internal server error", {}
    trailers: tuple[tuple[str, str], ...] = (("dynadapter-error", code),)
    if "Retry-After" in headers:
        trailers += (("retry-after", headers["Retry-After"]),)
    return STATUS.get(status, Code.INTERNAL), status, text, trailers


def address(host: str, port: int) -> str:
    """host:port as gRPC binds it (an IPv6 literal in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start(state: ServiceState, tracing: Tracing) -> grpc.aio.Server:
    """Serve the service on the settings' host and grpc_port in the running event loop; RuntimeError when
    the port cannot be bound (as uvicorn, the service does not start). ModelInfer calls are traced by
    `tracing` (as REST's inference routes), children of the `traceparent` in their metadata."""
    settings = state.settings
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
        ]
    )
    server.add_generic_rpc_handlers((InferenceServicer(state, tracing).handler(),))
    where = address(settings.host, settings.grpc_port)
    server.add_insecure_port(where)
    await server.start()
    logger.info("OIP gRPC service listening on %s", where)
    return server
