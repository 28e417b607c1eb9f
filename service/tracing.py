"""OpenTelemetry traces of the inference requests: the request, its body's read, decode, queue wait and segments.

Off unless the standard `OTEL_*` environment variables configure it (`Tracing.from_environment`): then
the OpenTelemetry SDK exports over OTLP (HTTP/protobuf or gRPC) with a batch span processor. Off, no
SDK is imported, no thread starts, and every hook below is one context-variable read.

What a Jaeger or Grafana Tempo user sees in one request's trace (docs/tracing.md):

    POST /v2/models/{name}/infer          SERVER: http.*, dynadapter.model, .model.version, knob, status
    ├─ read                               the body arriving
    ├─ decode                             images -> tensors, on the decode pool
    ├─ queue                              in the micro-batcher's queue, until its batch started
    ├─ segment 0                          one run of segment 0 over a batch (dynadapter.batch.size)
    └─ segment 1                          ... an `exit` event per image that left there (index, reason)

A batch serves several requests. Its segment runs are recorded as one child span per (request, segment
run), not as one span per batch linked to its requests: Jaeger and Tempo draw a trace as one waterfall
and show a link only as a reference to another trace, so with links the segments of a slow request would
be a click away, in another trace. Each such span carries the batch's size, so sharing stays visible.
The spans are made on the event loop after the segment ran (start = its end minus its time): nothing is
added to the inference thread, and the cost is a span per request and segment run (plus an event per
image that leaves), not a span per image.

The trace context a client sends (W3C `traceparent`, `OTEL_PROPAGATORS`) is the request span's parent:
REST passes its headers (`TracingMiddleware`), gRPC its invocation metadata (`Tracing.grpc_span`), both to
`Tracing.request_span`. The transport opens the request span around the whole call, not the data plane
(through its `Channel`): the answers given before the data plane runs (401, 404, 413, 415, 422) are traced
too. The data plane and the batcher find the request in the context (`contextvars`, which asyncio copies
into each task), so neither transport passes it by hand.
"""

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from functools import wraps
from importlib.metadata import PackageNotFoundError, version
from time import time_ns
from typing import TYPE_CHECKING, Any, ParamSpec

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dynadapter.errors import ConfigError
from dynadapter.service.segment_runner import StageOutput

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

logger = logging.getLogger(__name__)

SCOPE = "dynadapter.service"  # the instrumentation scope of every span here
DEFAULT_SERVICE_NAME = "dynadapter"  # service.name unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name one
PROTOCOLS = ("http/protobuf", "grpc")  # OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL; the spec's default first
EXPORTERS = ("otlp", "console", "none")  # OTEL_TRACES_EXPORTER, a comma-separated list

# The tracer and span of the request being served, set by `Tracing.request_span`: None (the default) means
# that this request is not traced, and every hook returns at once.
_REQUEST: ContextVar[tuple[Tracer, Span] | None] = ContextVar("dynadapter_traced_request", default=None)

P = ParamSpec("P")


def _never_raises(hook: Callable[P, None]) -> Callable[P, None]:
    """A hook of the inference path that logs its failure instead of failing the request (as an observer)."""

    @wraps(hook)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            hook(*args, **kwargs)
        except Exception:  # a tracing fault must not become the request's
            logger.exception("tracing hook %s failed; the request goes on untraced there", hook.__name__)

    return guarded


def configured(environ: Mapping[str, str]) -> bool:
    """Whether `environ` switches tracing on: an exporter other than `none` (OTEL_TRACES_EXPORTER) or an
    OTLP endpoint (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT), and not OTEL_SDK_DISABLED=true."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _exporter_names(environ)
    if exporters:
        return exporters != ["none"]
    return any(environ.get(name) for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    return [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]


class Tracing:
    """One app's tracer: `enabled` when it records spans; `shutdown` flushes and stops what it started.

    `provider`: a tracer provider (tests pass the SDK's with an in-memory exporter); None: off. `owned`: this
    app started it, and `shutdown` stops it.
    """

    def __init__(self, provider: trace.TracerProvider | None = None, owned: bool = True) -> None:
        self._provider = provider
        self._owned = owned
        self.tracer: Tracer | None = provider.get_tracer(SCOPE, _own_version()) if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "Tracing":
        """Tracing as the `OTEL_*` variables of `environ` (default: this process's) say; off unless configured.

        A tracer provider already installed in the process (`opentelemetry-instrument`, or an application
        embedding the service) is used as it is. Otherwise the SDK's TracerProvider reads OTEL_SERVICE_NAME,
        OTEL_RESOURCE_ATTRIBUTES and OTEL_TRACES_SAMPLER[_ARG]; its batch processor OTEL_BSP_*; the OTLP
        exporter OTEL_EXPORTER_OTLP_[TRACES_]{ENDPOINT,HEADERS,TIMEOUT,...}. `ConfigError` for an exporter or
        protocol this service does not ship, or when the SDK is not installed.
        """
        environ = os.environ if environ is None else environ
        installed = trace.get_tracer_provider()
        if not isinstance(installed, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            return cls(installed, owned=False)
        if not configured(environ):
            return cls(None)
        return cls(_sdk_provider(environ))

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporter's thread (the app's end); a provider installed by
        someone else is theirs to stop."""
        shutdown = getattr(self._provider, "shutdown", None)
        if self._owned and shutdown is not None:
            shutdown()

    def request_span(
        self, name: str, carrier: Mapping[str, str], kind: SpanKind, attributes: Mapping[str, AttributeValue]
    ) -> AbstractContextManager[Span]:
        """The span of one request, current for the block, child of the trace context in `carrier` (REST: its
        headers; gRPC: `grpc_carrier(metadata)`); off: the invalid span, at no cost.

        Errors raised in the block are recorded on the span and re-raised; the transport sets its status
        (`set_http_status`, `set_grpc_status`).
        """
        if self.tracer is None:
            return nullcontext(trace.INVALID_SPAN)
        return _request_span(self.tracer, name, carrier, kind, attributes)

    def grpc_span(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> AbstractContextManager[Span]:
        """`request_span` of one OIP v2 gRPC call (`method`: "ModelInfer", ...), child of the trace context in
        its invocation metadata (`context.invocation_metadata()`); the codec sets `set_grpc_status` at its end."""
        name = f"inference.GRPCInferenceService/{method}"
        return self.request_span(name, grpc_carrier(metadata), SpanKind.SERVER, grpc_attributes(method))


@contextmanager
def _request_span(
    tracer: Tracer, name: str, carrier: Mapping[str, str], kind: SpanKind, attributes: Mapping[str, AttributeValue]
) -> Iterator[Span]:
    parent = propagate.extract(carrier)
    with tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes) as span:
        token = _REQUEST.set((tracer, span) if span.is_recording() else None)  # not sampled: nothing more
        try:
            yield span
        finally:
            _REQUEST.reset(token)


def grpc_carrier(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """gRPC invocation metadata (`context.invocation_metadata()`) as a carrier for `Tracing.request_span`:
    its text entries by lower-case key (binary `-bin` entries carry no W3C trace context)."""
    return {key.lower(): value for key, value in metadata or () if isinstance(value, str)}


def grpc_attributes(method: str) -> dict[str, AttributeValue]:
    """The RPC semantic conventions of one OIP v2 gRPC call; span name: f"inference.GRPCInferenceService/{method}"."""
    return {"rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService", "rpc.method": method}


def set_grpc_status(span: Span, code: int) -> None:
    """The call's gRPC status code (0 OK); a server span is an error for UNKNOWN, DEADLINE_EXCEEDED,
    UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS (the RPC conventions' list)."""
    span.set_attribute("rpc.grpc.status_code", code)
    if code in (2, 4, 12, 13, 14, 15):
        span.set_status(Status(StatusCode.ERROR))


def set_http_status(span: Span, status: int) -> None:
    """The response's status code; a server span is an error for 5xx only (4xx are the client's)."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))


def child_span(name: str, **attributes: AttributeValue) -> AbstractContextManager[Any]:
    """A span of the request being served (read, decode), current for the block; not traced: nothing."""
    request = _REQUEST.get()
    if request is None:
        return nullcontext()
    return request[0].start_as_current_span(name, attributes=attributes)


@_never_raises
def annotate(attributes: Mapping[str, AttributeValue | None]) -> None:
    """Set attributes of the request span being served (`dynadapter.` is prefixed to each name; None values
    are left out); not traced: nothing."""
    request = _REQUEST.get()
    if request is None:
        return
    request[1].set_attributes({f"dynadapter.{key}": value for key, value in attributes.items() if value is not None})


@dataclass(frozen=True)
class ImageTrace:
    """One queued image of a traced request: its request's tracer and span, its index in the request and
    when it was queued (`time.time_ns()`)."""

    tracer: Tracer
    request: Span
    index: int
    queued_ns: int


def image_trace(index: int) -> ImageTrace | None:
    """What the micro-batcher needs to trace the image at `index` of the request being served; None when
    the request is not traced (the batcher then does nothing for it)."""
    request = _REQUEST.get()
    if request is None:
        return None
    return ImageTrace(request[0], request[1], index, time_ns())


def _by_request(traces: Iterable[ImageTrace | None]) -> dict[int, list[ImageTrace]]:
    groups: dict[int, list[ImageTrace]] = {}
    for item in traces:
        if item is not None:
            groups.setdefault(id(item.request), []).append(item)
    return groups


@_never_raises
def record_queue_waits(traces: Sequence[ImageTrace | None], started_ns: int) -> None:
    """At a batch's start (`started_ns`): per traced request in it, a `queue` span from its first image's
    queueing to now. `traces`: one per job of the batch, None for those not traced."""
    for images in _by_request(traces).values():
        first = images[0]
        span = first.tracer.start_span(
            "queue",
            context=trace.set_span_in_context(first.request),
            start_time=min(image.queued_ns for image in images),
            attributes={"dynadapter.images": len(images), "dynadapter.batch.size": len(traces)},
        )
        span.end(end_time=started_ns)


@_never_raises
def record_stage(traces: Sequence[ImageTrace | None], stage: StageOutput, end_ns: int) -> None:
    """After one segment ran over a batch (ending at `end_ns`): per traced request whose images ran it, a
    `segment k` span, with an `exit` event per image of it that left there.

    `traces`: by position in the batch, None for the images not traced or no longer waiting for an answer
    (answered earlier, cancelled): every other image ran this segment.
    """
    start_ns = end_ns - int(stage.seconds * 1e9)
    positions = {id(image): position for position, image in enumerate(traces) if image is not None}
    for images in _by_request(traces).values():
        first = images[0]
        span = first.tracer.start_span(
            f"segment {stage.stage}",
            context=trace.set_span_in_context(first.request),
            start_time=start_ns,
            attributes={
                "dynadapter.segment": stage.stage,
                "dynadapter.batch.size": stage.rows,
                "dynadapter.images": len(images),
            },
        )
        for image in images:
            result = stage.exits.get(positions[id(image)])
            if result is not None:
                exit_ = {"dynadapter.image": image.index, "dynadapter.exit": result.exit_index}
                span.add_event("exit", exit_ | {"dynadapter.exit.reason": result.reason}, timestamp=end_ns)
        span.end(end_time=end_ns)


def _own_version() -> str:
    try:
        return version("dyn-adapter")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _sdk_provider(environ: Mapping[str, str]) -> "SdkTracerProvider":
    """The SDK's provider with one batch span processor per exporter OTEL_TRACES_EXPORTER names (default otlp)."""
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigError(
            "tracing is configured (OTEL_*) but opentelemetry-sdk is not installed: install dyn-adapter[serve]"
        ) from None
    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME, SERVICE_VERSION: _own_version()}))
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER[_ARG]
    for name in [n for n in _exporter_names(environ) or ["otlp"] if n != "none"]:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, environ)))
    return provider


def _exporter(name: str, environ: Mapping[str, str]) -> "SpanExporter":
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER: {name!r} is not one of {', '.join(EXPORTERS)}")
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", PROTOCOLS[0]
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not one of {', '.join(PROTOCOLS)}")


class TracingMiddleware:
    """The SERVER span of each REST request on a traced route (`route_of(path)`: its route template, None:
    not traced), child of the request's `traceparent`, with the HTTP semantic conventions' attributes.

    Pure ASGI and outermost, so that it sees every answer, the 413s and 408s of the body limits included;
    tracing off, it passes requests through untouched.
    """

    def __init__(self, app: ASGIApp, tracing: Tracing, route_of: Callable[[str], str | None]) -> None:
        self.app = app
        self.tracing = tracing
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.route_of(scope["path"]) if scope["type"] == "http" and self.tracing.enabled else None
        if route is None:
            await self.app(scope, receive, send)
            return
        # ASGI header names are lower-case bytes; the W3C propagator looks up `traceparent` and `tracestate`.
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        name = f"{scope['method']} {route}"
        with self.tracing.request_span(name, headers, SpanKind.SERVER, _http_attributes(scope, route, headers)) as span:
            answered = False

            async def send_traced(message: Message) -> None:
                nonlocal answered
                if message["type"] == "http.response.start":
                    answered = True
                    set_http_status(span, message["status"])
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                if not answered:  # the app raised before answering: Starlette's outermost handler answers 500
                    set_http_status(span, 500)


def _http_attributes(scope: Scope, route: str, headers: Mapping[str, str]) -> dict[str, AttributeValue]:
    """The HTTP server span's attributes (OpenTelemetry semantic conventions, stable HTTP)."""
    attributes: dict[str, AttributeValue] = {
        "http.request.method": scope["method"],
        "http.route": route,
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    if scope.get("query_string"):
        attributes["url.query"] = scope["query_string"].decode("latin-1")
    if scope.get("server"):
        attributes["server.address"], attributes["server.port"] = scope["server"][0], scope["server"][1]
    if scope.get("client"):
        attributes["client.address"] = scope["client"][0]
    if "user-agent" in headers:
        attributes["user_agent.original"] = headers["user-agent"]
    return attributes
