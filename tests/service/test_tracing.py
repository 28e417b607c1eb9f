"""OpenTelemetry traces (docs/tracing.md): the spans of real requests, in memory and exported over OTLP to a
local receiver by a real server process; off unless the OTEL_* variables say so."""

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from dynadapter.bench.lab.process import free_port
from dynadapter.errors import ConfigError
from dynadapter.service.main import create_app, serve
from dynadapter.service.settings import Settings
from dynadapter.service.tracing import Tracing, configured, grpc_carrier, set_grpc_status
from tests.support.grpc_clients import RawClient, infer_request
from tests.support.service import IMAGE, ROOT, ServiceProcess, wait_ready
from tests.support.tiny_onnx_model import NUM_EXITS, png_bytes

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
TRACEPARENT = {"traceparent": f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"}


@pytest.fixture
def backend() -> str:
    return "onnxruntime"  # the spans are the data plane's and the batcher's, the same on every backend


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(make_settings: Callable[..., Settings], exporter: InMemorySpanExporter) -> Iterator[TestClient]:
    """An app whose spans go to `exporter` as each ends."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with TestClient(create_app(make_settings(), Tracing(provider))) as client:
        wait_ready(client)
        exporter.clear()  # the readiness polls are not traced; nothing else ran
        yield client


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def children_of(request: ReadableSpan, spans: tuple[ReadableSpan, ...]) -> list[ReadableSpan]:
    assert request.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == request.context.span_id]


def test_a_classify_request_is_one_trace_under_the_traceparent_sent(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    response = traced.post("/classify?threshold=1", content=png_bytes(0), headers=IMAGE | TRACEPARENT)
    assert response.status_code == 200 and response.json()["exit"]["index"] == NUM_EXITS - 1
    spans = exporter.get_finished_spans()
    named = by_name(spans)
    segments = [f"segment {k}" for k in range(NUM_EXITS)]  # threshold 1: every segment runs
    assert set(named) == {"POST /classify", "read", "decode", "queue", *segments}
    (request,) = named["POST /classify"]
    assert request.kind == SpanKind.SERVER
    assert request.parent is not None and request.parent.is_remote
    assert (request.parent.trace_id, request.parent.span_id) == (TRACE_ID, PARENT_ID)
    assert {span.context.trace_id for span in spans if span.context} == {TRACE_ID}
    assert request.attributes is not None
    assert {
        key: request.attributes[key] for key in request.attributes if not key.startswith(("server.", "client."))
    } == {
        "http.request.method": "POST",
        "http.route": "/classify",
        "url.path": "/classify",
        "url.query": "threshold=1",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "user_agent.original": "testclient",
        "http.response.status_code": 200,
        "dynadapter.model": "tiny",
        "dynadapter.model.version": "1",
        "dynadapter.threshold": 1.0,
        "dynadapter.thresholds": (1.0,) * (NUM_EXITS - 1),
        "dynadapter.images": 1,
    }
    assert request.status.status_code == StatusCode.UNSET
    assert sorted(s.name for s in children_of(request, spans)) == sorted(["read", "decode", "queue", *segments])
    for k in range(NUM_EXITS):
        (segment,) = named[f"segment {k}"]
        assert segment.attributes == {"dynadapter.segment": k, "dynadapter.batch.size": 1, "dynadapter.images": 1}
        exits = [(event.name, dict(event.attributes or {})) for event in segment.events]
        last = {"dynadapter.image": 0, "dynadapter.exit": k, "dynadapter.exit.reason": "last"}
        assert exits == ([("exit", last)] if k == NUM_EXITS - 1 else [])
    # In order on one clock: queued, then each segment after the one before it.
    (queue,) = named["queue"]
    ends = [queue.end_time] + [named[name][0].end_time for name in segments]
    assert ends == sorted(ends) and all(t is not None for t in ends)


def test_each_image_that_leaves_is_an_exit_event_of_the_segment_it_left_at(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    files = [("file", (f"{i}.png", png_bytes(i), "image/png")) for i in range(3)]
    response = traced.post("/classify?threshold=0", files=files)
    assert response.status_code == 200 and [a["exit"]["index"] for a in response.json()] == [0, 0, 0]
    named = by_name(exporter.get_finished_spans())
    assert not any(name.startswith("segment ") and name != "segment 0" for name in named)  # all left at exit 0
    events = [dict(event.attributes or {}) for segment in named["segment 0"] for event in segment.events]
    assert sorted(events, key=lambda e: e["dynadapter.image"]) == [
        {"dynadapter.image": i, "dynadapter.exit": 0, "dynadapter.exit.reason": "confident"} for i in range(3)
    ]
    assert sum(s.attributes["dynadapter.images"] for s in named["segment 0"] if s.attributes) == 3
    (request,) = named["POST /classify"]
    assert request.parent is None  # no traceparent sent: a trace of its own
    assert request.attributes and request.attributes["dynadapter.images"] == 3


def test_an_oip_request_is_traced_with_its_route_template_and_knob(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    body = {
        "inputs": [
            {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(png_bytes(1)).decode()]}
        ],
        "parameters": {"mode": "fast"},
    }
    response = traced.post("/v2/models/tiny/versions/1/infer", json=body, headers=TRACEPARENT)
    assert response.status_code == 200
    (request,) = by_name(exporter.get_finished_spans())["POST /v2/models/{name}/versions/{version}/infer"]
    assert request.attributes is not None
    assert request.attributes["http.route"] == "/v2/models/{name}/versions/{version}/infer"
    assert request.attributes["url.path"] == "/v2/models/tiny/versions/1/infer"
    assert request.attributes["dynadapter.mode"] == "fast" and "dynadapter.threshold" not in request.attributes
    assert request.parent is not None and request.parent.span_id == PARENT_ID


def test_a_caller_that_did_not_sample_its_trace_gets_no_spans(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    unsampled = {"traceparent": f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-00"}  # the SDK's default: parent-based
    response = traced.post("/classify?threshold=1", content=png_bytes(0), headers=IMAGE | unsampled)
    assert response.status_code == 200 and response.json()["exit"]["index"] == NUM_EXITS - 1
    assert exporter.get_finished_spans() == ()


def test_refused_requests_carry_their_status_and_other_routes_are_not_traced(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    assert traced.post("/classify?model=nope", content=png_bytes(0), headers=IMAGE | TRACEPARENT).status_code == 404
    assert traced.get("/v2/models/tiny", headers=TRACEPARENT).status_code == 200
    assert traced.get("/healthz", headers=TRACEPARENT).status_code == 200
    (request,) = exporter.get_finished_spans()  # the refusal alone: no read, no decode, no segment
    assert request.name == "POST /classify" and request.attributes is not None
    assert request.attributes["http.response.status_code"] == 404
    assert request.status.status_code == StatusCode.UNSET  # a 4xx is the client's, not a server error


class FailingSpans(trace.TracerProvider):
    """An SDK provider whose tracer fails to make the spans the batcher makes (queue, segments)."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self._provider = TracerProvider()
        self._provider.add_span_processor(SimpleSpanProcessor(exporter))

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        tracer = self._provider.get_tracer(*args, **kwargs)
        start = tracer.start_span

        def start_span(name: str, *args: Any, **kwargs: Any) -> trace.Span:
            if name == "queue" or name.startswith("segment "):
                raise RuntimeError("a broken tracer")
            return start(name, *args, **kwargs)

        tracer.start_span = start_span  # type: ignore[method-assign]
        return tracer


def test_a_failing_tracing_hook_fails_no_request(
    make_settings: Callable[..., Settings], exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(create_app(make_settings(), Tracing(FailingSpans(exporter)))) as client:
        wait_ready(client)
        response = client.post("/classify?threshold=1", content=png_bytes(0), headers=IMAGE | TRACEPARENT)
    assert response.status_code == 200 and response.json()["exit"]["index"] == NUM_EXITS - 1
    assert {span.name for span in exporter.get_finished_spans()} == {"POST /classify", "read", "decode"}
    failed = {r.getMessage() for r in caplog.records if r.name == "dynadapter.service.tracing"}
    assert {m.split(";")[0] for m in failed} == {
        "tracing hook record_queue_waits failed",
        "tracing hook record_stage failed",
    }


def test_a_grpc_call_takes_its_parent_from_the_invocation_metadata(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    metadata = [("traceparent", TRACEPARENT["traceparent"]), ("authorization", "Bearer k"), ("trace-bin", b"\x00")]
    carrier = grpc_carrier(metadata)
    assert carrier == {"traceparent": TRACEPARENT["traceparent"], "authorization": "Bearer k"}
    with Tracing(provider).grpc_span("ModelInfer", metadata) as span:
        set_grpc_status(span, 14)  # UNAVAILABLE
    (done,) = exporter.get_finished_spans()
    assert done.name == "inference.GRPCInferenceService/ModelInfer" and done.kind == SpanKind.SERVER
    assert done.parent is not None and (done.parent.trace_id, done.parent.span_id) == (TRACE_ID, PARENT_ID)
    assert dict(done.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "inference.GRPCInferenceService",
        "rpc.method": "ModelInfer",
        "rpc.grpc.status_code": 14,
    }
    assert done.status.status_code == StatusCode.ERROR


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_an_exporter_or_endpoint_is_configured(environ: dict[str, str], on: bool) -> None:
    assert configured(environ) is on
    assert Tracing.from_environment(environ).enabled is on


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: 'zipkin' is not one of otlp, console, none"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' is not one of http/protobuf, grpc",
        ),
    ],
)
def test_an_exporter_or_protocol_not_shipped_is_a_config_error(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        Tracing.from_environment(environ)
    assert str(error.value) == message


OFF_PROBE = """
import json, sys, threading
from fastapi.testclient import TestClient
from dynadapter.service.main import create_app, serve
from dynadapter.service.settings import Settings
from tests.support.service import IMAGE, wait_ready
from tests.support.tiny_onnx_model import png_bytes
with TestClient(create_app(Settings(model_repo=sys.argv[1], providers="cpu"))) as client:
    wait_ready(client)
    status = client.post("/classify", content=png_bytes(0), headers=IMAGE | {"traceparent": sys.argv[2]}).status_code
    print(json.dumps({
        "status": status,
        "enabled": client.app.state.tracing.enabled,
        "sdk": sorted(name for name in sys.modules if name.startswith("opentelemetry.sdk")),
        "threads": sorted(t.name for t in threading.enumerate() if t.name.startswith("Otel")),
    }))
"""


def test_tracing_off_imports_no_sdk_and_starts_no_exporter_thread(model_repo: Path) -> None:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", OFF_PROBE, str(model_repo), TRACEPARENT["traceparent"]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environ,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"status": 200, "enabled": False, "sdk": [], "threads": []}


class Receiver:
    """An OTLP trace receiver on loopback (HTTP/protobuf at /v1/traces, or gRPC): the ResourceSpans it got."""

    def __init__(self) -> None:
        self.received: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._lock = threading.Lock()

    def take(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self._lock:
            self.received.append(request)

    def spans(self) -> list[tuple[str, object]]:
        """(service.name, span) of everything received."""
        with self._lock:
            return [
                (_service_name(resource_spans), span)
                for request in self.received
                for resource_spans in request.resource_spans
                for scope_spans in resource_spans.scope_spans
                for span in scope_spans.spans
            ]


def _service_name(resource_spans: object) -> str:
    attributes = resource_spans.resource.attributes  # type: ignore[attr-defined]
    return next(a.value.string_value for a in attributes if a.key == "service.name")


@pytest.fixture
def http_receiver() -> Iterator[tuple[Receiver, str]]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["content-length"]))
            if self.path == "/v1/traces" and self.headers["content-type"] == "application/x-protobuf":
                receiver.take(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
            else:
                answer = b""
                self.send_response(400)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[Receiver, str]]:
    receiver = Receiver()

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802 (the proto's name)
            receiver.take(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, f"http://127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_real_server_exports_its_spans_over_otlp(
    protocol: str, model_repo: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver, endpoint = request.getfixturevalue("http_receiver" if protocol == "http/protobuf" else "grpc_receiver")
    for name, value in {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": "dynadapter-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds between exports
    }.items():
        monkeypatch.setenv(name, value)  # the server process's environment (ServiceProcess copies this one's)
    grpc_port = free_port()
    server = ServiceProcess(model_repo, providers="cpu", intra_op_threads="1", grpc_port=str(grpc_port))
    try:
        server.wait_ready()
        answer = httpx.post(server.classify_url, content=png_bytes(0), headers=IMAGE | TRACEPARENT, timeout=30)
        assert answer.status_code == 200
        client = RawClient(f"127.0.0.1:{grpc_port}")
        client.call("ModelInfer", infer_request("tiny", [png_bytes(1)]), metadata=tuple(TRACEPARENT.items()))
        client.close()
        deadline = time.monotonic() + 20
        while sum(span.kind == span.SPAN_KIND_SERVER for _, span in receiver.spans()) < 2:
            assert time.monotonic() < deadline, f"no request span arrived: {server.output[-2000:]}"
            time.sleep(0.05)
    finally:
        server.stop()
    spans = receiver.spans()  # the shutdown flushed the rest
    assert {service for service, _ in spans} == {"dynadapter-under-test"}
    assert {span.trace_id for _, span in spans} == {TRACE_ID.to_bytes(16, "big")}
    names = {span.name for _, span in spans}
    assert {"POST /classify", "read", "decode", "queue", "segment 0"} <= names
    for name in ("POST /classify", "inference.GRPCInferenceService/ModelInfer"):  # REST and gRPC alike
        (request_span,) = [span for _, span in spans if span.name == name]
        assert request_span.parent_span_id == PARENT_ID.to_bytes(8, "big")
        children = {span.name for _, span in spans if span.parent_span_id == request_span.span_id}
        assert {"read", "decode", "queue", "segment 0"} <= children, (name, children)


def test_serve_refuses_an_exporter_it_does_not_ship_in_one_line(
    model_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")  # the Jaeger exporter left OpenTelemetry: OTLP it is
    with pytest.raises(SystemExit) as exit_:
        serve(Settings(model_repo=model_repo, providers="cpu"))
    assert exit_.value.code == "dynadapter serve: OTEL_TRACES_EXPORTER: 'jaeger' is not one of otlp, console, none"
