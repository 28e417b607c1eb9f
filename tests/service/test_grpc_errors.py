"""OIP gRPC errors against a real server: every status code, a hostile-input table as for REST (model names
and versions confined to the repository, bad tensors, shapes, datatypes, parameters, outputs, oversized
messages), API keys as `authorization` metadata, and Triton's repository RPCs. The statuses only a busy
or unready service gives (UNAVAILABLE, the deadlines) are provoked in process with a gated cascade."""

import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient

from dynadapter.bench.lab.process import free_port
from dynadapter.service.grpc.protocol import message
from dynadapter.service.main import create_app
from tests.support.grpc_clients import RawClient, infer_request, set_parameter
from tests.support.service import samples, serving, value, wait_ready
from tests.support.stand_ins import HeldFirstRequest, SegmentGate, gate_runner
from tests.support.tiny_onnx_model import (
    IMAGE_SIZE,
    NUM_EXITS,
    TinyWeights,
    png_bytes,
    png_header_claiming,
    write_escaping_layout,
)

KEY = "k2"
PNG = png_bytes(0)
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory, weights: TinyWeights) -> Path:
    root = tmp_path_factory.mktemp("grpc-names")
    write_escaping_layout(root, weights)
    return root


@pytest.fixture(scope="module")
def client(layout: Path) -> Iterator[RawClient]:
    port = free_port()
    settings = {
        "version_policy": "all",
        "max_images_per_request": "6",
        "max_body_bytes": "100000",
        "api_keys": f"k1,{KEY}",
    }
    with serving(layout / "repo", grpc_port=str(port), **settings):
        client = RawClient(f"127.0.0.1:{port}")
        yield client
        client.close()


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def assert_status(
    err: grpc.RpcError, code: grpc.StatusCode, error: str | None, fragment: str, layout: Path | None = None
) -> None:
    """`err` has gRPC status `code`, the service's error code `error` in its trailers and `fragment` in its message."""
    assert err.code() == code, (err.code(), err.details())
    assert fragment in err.details(), err.details()
    if error is not None:
        assert ("dynadapter-error", error) in [(m.key, m.value) for m in err.trailing_metadata()]
    if layout is not None:
        assert str(layout) not in err.details(), f"a server path shows: {err.details()}"


# The hostile names and versions of tests/service/test_model_names.py, as gRPC sends them: plain strings in
# the message (no URL, so no route to miss): every refused name is INVALID_ARGUMENT before any file is read.
HOSTILE_NAMES = ["..", ".", "a/b", "a\\b", "\x00", "x\n", "../outside", "-x", "n" * 300]
HOSTILE_VERSIONS = ["..", "../1", "\uff11", "\u0663", "\u00b2", "-1", "1.0", "1" * 40]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_a_hostile_model_name_is_invalid_on_every_method(client: RawClient, layout: Path, name: str) -> None:
    calls = {
        "ModelInfer": lambda: client.call("ModelInfer", infer_request(name, [PNG]), key=KEY),
        "ModelReady": lambda: client.call("ModelReady", name=name, key=KEY),
        "ModelMetadata": lambda: client.call("ModelMetadata", name=name, key=KEY),
        "RepositoryModelLoad": lambda: client.call("RepositoryModelLoad", model_name=name, key=KEY),
        "RepositoryModelUnload": lambda: client.call("RepositoryModelUnload", model_name=name, key=KEY),
    }
    for method, call in calls.items():
        err = refused(call)
        assert_status(err, Code.INVALID_ARGUMENT, "invalid_model_name", "", layout), method


@pytest.mark.parametrize("version", HOSTILE_VERSIONS, ids=repr)
def test_a_hostile_version_is_invalid_on_every_method(client: RawClient, layout: Path, version: str) -> None:
    request = infer_request("tiny", [PNG])
    request.model_version = version
    for call in (
        lambda: client.call("ModelInfer", request, key=KEY),
        lambda: client.call("ModelReady", name="tiny", version=version, key=KEY),
        lambda: client.call("ModelMetadata", name="tiny", version=version, key=KEY),
    ):
        assert_status(refused(call), Code.INVALID_ARGUMENT, "invalid_model_name", "", layout)


def test_links_out_of_the_repository_are_never_served(client: RawClient, layout: Path) -> None:
    # repo/escape -> outside, repo/tiny/7 -> outside/1: valid names, never served, never loaded.
    assert client.call("ModelReady", name="escape", key=KEY).ready is False
    assert client.call("ModelReady", name="tiny", version="7", key=KEY).ready is False
    err = refused(lambda: client.call("ModelInfer", infer_request("escape", [PNG]), key=KEY))
    assert_status(err, Code.NOT_FOUND, "model_not_found", "model 'escape' is not served; served: tiny", layout)
    request = infer_request("tiny", [PNG])
    request.model_version = "7"
    err = refused(lambda: client.call("ModelInfer", request, key=KEY))
    assert_status(err, Code.NOT_FOUND, "model_not_found", "version '7' of model 'tiny'", layout)
    err = refused(lambda: client.call("RepositoryModelLoad", model_name="escape", key=KEY))
    assert_status(err, Code.INVALID_ARGUMENT, "invalid_model_name", "", layout)


def _request(
    inputs: list[dict], raw: list[bytes] | None = None, outputs: list[tuple[str, dict]] = (), **parameters: Any
) -> Any:
    """A ModelInferRequest for tiny: `inputs` as {name, datatype, shape, field: values}."""
    request = message("ModelInferRequest")(model_name="tiny")
    for spec in inputs:
        tensor = request.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        for field in ("bytes_contents", "fp32_contents", "int_contents"):
            getattr(tensor.contents, field).extend(spec.get(field, []))
    request.raw_input_contents.extend(raw or [])
    for name, options in outputs:
        output = request.outputs.add(name=name)
        for key, given in options.items():
            set_parameter(output.parameters[key], given)
    for key, given in parameters.items():
        set_parameter(request.parameters[key], given)
    return request


def image(count: int = 1, **extra: Any) -> dict:
    return {"name": "image", "datatype": "BYTES", "shape": [count], "bytes_contents": [PNG] * count} | extra


def pixels(shape: list[int], values: list[float]) -> dict:
    return {"name": "pixels", "datatype": "FP32", "shape": shape, "fp32_contents": values}


ONE = [image()]
#: (id, request, gRPC status, the service's error code, a fragment of the message): what REST answers
#: 400 is INVALID_ARGUMENT, 413 RESOURCE_EXHAUSTED, 504 DEADLINE_EXCEEDED (tests/service/test_oip.py's table).
HOSTILE_REQUESTS = [
    ("no input", _request([]), Code.INVALID_ARGUMENT, "bad_request", "inputs"),
    ("two inputs", _request([image(), image()]), Code.INVALID_ARGUMENT, "bad_request", "exactly one input"),
    ("unknown input", _request([image(name="x")]), Code.INVALID_ARGUMENT, "bad_request", "unknown input 'x'"),
    (
        "image as FP32",
        _request([{"name": "image", "datatype": "FP32", "shape": [1], "fp32_contents": [1.0]}]),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "must be BYTES of shape [N]",
    ),
    (
        "image of rank 2",
        _request([image(shape=[1, 1])]),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "must be BYTES of shape [N]",
    ),
    (
        "shape over elements",
        _request([image(shape=[2])]),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "shape [2] but 1 element(s)",
    ),
    (
        "negative shape",
        _request([image(shape=[-1])]),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "shape [-1] but 1 element(s)",
    ),
    ("huge shape", _request([image(shape=[2**62])]), Code.INVALID_ARGUMENT, "bad_request", "but 1 element(s)"),
    (
        "contents of another datatype",
        _request([{"name": "image", "datatype": "BYTES", "shape": [1], "int_contents": [1]}]),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "datatype 'BYTES' but data in int_contents; send bytes_contents",
    ),
    ("raw and contents", _request(ONE, raw=[b"\x00" * 4]), Code.INVALID_ARGUMENT, "bad_request", "send one"),
    (
        "raw tensors over inputs",
        _request([image(bytes_contents=[])], raw=[b"", b""]),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "raw_input_contents holds 2 tensor(s) for 1 input(s)",
    ),
    (
        "cut length prefix",
        _request([image(bytes_contents=[])], raw=[b"\x05\x00"]),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "length prefix is cut short",
    ),
    (
        "element under its prefix",
        _request([image(bytes_contents=[])], raw=[struct.pack("<I", 100) + b"abcd"]),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "shorter than its length prefix",
    ),
    ("not an image", _request([image(bytes_contents=[b"not an image"])]), Code.INVALID_ARGUMENT, "invalid_image", ""),
    (
        "pixels of another size",
        _request([pixels([1, 3, 4, 4], [0.0] * 48)]),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "[N, 3, 8, 8]",
    ),
    ("NaN pixels", _request([pixels([1, 3, 8, 8], [float("nan")] * 192)]), Code.INVALID_ARGUMENT, "bad_request", "NaN"),
    (
        "pixels short",
        _request([pixels([1, 3, 8, 8], [0.0] * 10)]),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "needs 192 values, got 10",
    ),
    (
        "raw pixels not whole floats",
        _request([{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 8, 8]}], raw=[b"\x00" * 10]),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "needs 192 values, got 0",
    ),
    (
        "pixels as INT32",
        _request([{"name": "pixels", "datatype": "INT32", "shape": [1, 3, 8, 8], "int_contents": [0] * 192}]),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "must be FP32",
    ),
    ("threshold above 1", _request(ONE, threshold=2.0), Code.INVALID_ARGUMENT, "bad_request", "parameters: threshold"),
    (
        "threshold a boolean",
        _request(ONE, threshold=True),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "parameters: threshold",
    ),
    (
        "threshold a word",
        _request(ONE, threshold="half"),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "parameters: threshold",
    ),
    ("mode and budget", _request(ONE, mode="fast", budget=0.5), Code.INVALID_ARGUMENT, "bad_request", "at most one"),
    ("unknown mode", _request(ONE, mode="nope"), Code.INVALID_ARGUMENT, "bad_request", "parameters: mode"),
    ("unknown parameter", _request(ONE, tiemout=5), Code.INVALID_ARGUMENT, "bad_request", "tiemout"),
    ("negative timeout", _request(ONE, timeout=-1), Code.INVALID_ARGUMENT, "bad_request", "parameters: timeout"),
    ("timeout a boolean", _request(ONE, timeout=True), Code.INVALID_ARGUMENT, "bad_request", "parameters: timeout"),
    (
        "unknown output",
        _request(ONE, outputs=[("logits", {})]),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "unknown output 'logits'",
    ),
    (
        "output twice",
        _request(ONE, outputs=[("gflops", {}), ("gflops", {})]),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "requested more than once",
    ),
    (
        "classification of gflops",
        _request(ONE, outputs=[("gflops", {"classification": 2})]),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "applies to the output 'probabilities' only",
    ),
    (
        "classification past the classes",
        _request(ONE, outputs=[("probabilities", {"classification": 99})]),
        Code.INVALID_ARGUMENT,
        "bad_request",
        "an integer from 0 to 5",
    ),
    ("too many images", _request([image(7)]), Code.RESOURCE_EXHAUSTED, "too_many_images", "more than 6 images"),
    (
        "decompression bomb",
        _request([image(bytes_contents=[png_header_claiming(20_000, 20_000)])]),
        Code.RESOURCE_EXHAUSTED,
        "image_too_large",
        "",
    ),
    (
        "the request's own timeout",
        _request(ONE, timeout=1),
        Code.DEADLINE_EXCEEDED,
        "timeout",
        "did not finish within 1e-06 s",
    ),
]


@pytest.mark.parametrize(
    ("request_", "code", "error", "fragment"),
    [row[1:] for row in HOSTILE_REQUESTS],
    ids=[row[0] for row in HOSTILE_REQUESTS],
)
def test_a_hostile_request_gets_the_protocol_status(
    client: RawClient, request_: Any, code: grpc.StatusCode, error: str, fragment: str
) -> None:
    assert_status(refused(lambda: client.call("ModelInfer", request_, key=KEY)), code, error, fragment)


def test_a_message_over_the_body_limit_is_resource_exhausted(client: RawClient) -> None:
    big = _request([image(bytes_contents=[b"x" * 150_000])])  # max_body_bytes is 100000
    assert refused(lambda: client.call("ModelInfer", big, key=KEY)).code() == Code.RESOURCE_EXHAUSTED
    assert client.call("ServerLive").live, "the server goes on"


@pytest.mark.parametrize("metadata_key", [None, "wrong", "Basic k1"], ids=["none", "wrong", "basic"])
def test_api_keys_are_required_as_authorization_metadata(client: RawClient, metadata_key: str | None) -> None:
    channel_key = (
        metadata_key.removeprefix("Basic ") if metadata_key and metadata_key.startswith("Basic") else metadata_key
    )
    for method, fields in [
        ("ModelInfer", {"request": infer_request("tiny", [PNG])}),
        ("ModelReady", {"name": "tiny"}),
        ("ModelMetadata", {"name": "tiny"}),
        ("RepositoryIndex", {}),
        ("RepositoryModelUnload", {"model_name": "tiny"}),
    ]:
        if metadata_key == "Basic k1":  # a right key under another scheme is no bearer token
            request = fields.pop("request", None)
            stub = client.channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            payload = (request if request is not None else message(f"{method}Request")(**fields)).SerializeToString()
            with pytest.raises(grpc.RpcError) as caught:
                stub(payload, metadata=(("authorization", metadata_key),), timeout=30)
            err = caught.value
        else:
            err = refused(lambda: client.call(method, key=channel_key, **fields))  # noqa: B023
        assert_status(err, Code.UNAUTHENTICATED, "unauthorized", "missing or invalid API key")
    # Health stays open, as on REST; either key works.
    assert client.call("ServerLive").live and client.call("ServerReady").ready
    assert client.call("ServerMetadata").name == "dyn-adapter"
    assert client.call("ModelReady", name="tiny", key="k1").ready


def test_repository_rpcs_unload_and_load_a_model(client: RawClient) -> None:
    err = refused(lambda: client.call("RepositoryModelUnload", model_name="nope", key=KEY))
    assert_status(err, Code.NOT_FOUND, "model_not_found", "model 'nope' is not served; served: tiny")
    load = message("RepositoryModelLoadRequest")(model_name="tiny")
    load.parameters["config"].string_param = "{}"
    err = refused(lambda: client.call("RepositoryModelLoad", load, key=KEY))
    assert_status(err, Code.INVALID_ARGUMENT, "bad_request", "load: parameter 'config' is not supported")
    unload = message("RepositoryModelUnloadRequest")(model_name="tiny")
    unload.parameters["unload_dependents"].bool_param = True
    err = refused(lambda: client.call("RepositoryModelUnload", unload, key=KEY))
    assert_status(err, Code.INVALID_ARGUMENT, "bad_request", "unload: parameter 'unload_dependents' can only be false")

    unload.parameters["unload_dependents"].bool_param = False
    client.call("RepositoryModelUnload", unload, key=KEY)
    try:
        assert client.call("ModelReady", name="tiny", key=KEY).ready is False
        assert client.call("ServerReady").ready is False
        err = refused(lambda: client.call("ModelInfer", infer_request("tiny", [PNG]), key=KEY))
        assert_status(err, Code.NOT_FOUND, "model_not_found", "model 'tiny' is not served; served: none")
        assert [(m.name, m.state) for m in client.call("RepositoryIndex", key=KEY).models if m.name == "tiny"] == [
            ("tiny", "UNAVAILABLE")
        ]
    finally:
        client.call("RepositoryModelLoad", model_name="tiny", key=KEY)
    assert client.call("ModelReady", name="tiny", key=KEY).ready is True
    assert client.call("ModelInfer", infer_request("tiny", [PNG]), key=KEY).model_version == "1"


# In process: the app's lifespan serves gRPC on a free port; the cascade waits at a gate the test opens.


@pytest.fixture
def start_grpc(make_settings: Callable) -> Iterator[Callable[..., tuple[TestClient, RawClient]]]:
    started: list[tuple[TestClient, RawClient]] = []

    def start(**overrides: object) -> tuple[TestClient, RawClient]:
        port = free_port()
        app = TestClient(create_app(make_settings(host="127.0.0.1", grpc_port=port, **overrides), serve_grpc=True))
        app.__enter__()
        wait_ready(app)
        started.append((app, RawClient(f"127.0.0.1:{port}")))
        return started[-1]

    yield start
    for app, client in started:
        client.close()
        app.__exit__(None, None, None)


def test_unavailable_while_not_ready_and_when_the_queue_is_full(
    start_grpc: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client = start_grpc(max_batch_size=1, max_queue=1)
    monkeypatch.setattr(app.app.state.service, "ready", False)
    assert client.call("ServerReady").ready is False
    err = refused(lambda: client.call("ModelInfer", infer_request("tiny", [PNG])))
    assert_status(err, Code.UNAVAILABLE, "not_ready", "not loaded and warmed yet")
    monkeypatch.setattr(app.app.state.service, "ready", True)

    gate = gate_runner(app, monkeypatch)
    infer = lambda: client.call("ModelInfer", infer_request("tiny", [PNG]))  # noqa: E731
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(infer)
        assert gate.entered.wait(10)  # the first request holds the only inference slot
        others = [pool.submit(infer) for _ in range(2)]
        done, _ = wait(others, timeout=10, return_when=FIRST_COMPLETED)  # one queued, one refused at once
        err = done.pop().exception()
        gate.open.set()
        assert first.result().model_version == "1"
    assert isinstance(err, grpc.RpcError)
    assert_status(err, Code.UNAVAILABLE, "overloaded", "the request queue is full")
    assert int(dict((m.key, m.value) for m in err.trailing_metadata())["retry-after"]) >= 1


def test_the_service_deadline_and_the_grpc_deadline(start_grpc: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    app, client = start_grpc(request_timeout_s=0.2)
    gate = gate_runner(app, monkeypatch)
    try:
        err = refused(lambda: client.call("ModelInfer", infer_request("tiny", [PNG])))
        assert_status(err, Code.DEADLINE_EXCEEDED, "timeout", "did not finish within 0.2 s")
    finally:
        gate.open.set()
    app2, client2 = start_grpc(request_timeout_s=30)
    gate = gate_runner(app2, monkeypatch)
    try:  # the call's own deadline bounds the request, whichever side notices first
        err = refused(lambda: client2.call("ModelInfer", infer_request("tiny", [PNG]), timeout=0.3))
        assert err.code() == Code.DEADLINE_EXCEEDED
    finally:
        gate.open.set()
    assert (
        np.frombuffer(client2.call("ModelInfer", infer_request("tiny", [PNG])).raw_output_contents[1], "<i4").size == 1
    )


def test_a_cancelled_call_leaves_the_batch_before_the_next_segment(start_grpc: Callable) -> None:
    """As a REST client that hangs up (tests/service/test_cancellation.py): its images are dropped, counted."""
    # Three images make a full batch: the stayer is held, admitted, until the leaver's two images are queued,
    # and their batch waits for it (a long max_wait_ms never cuts that short).
    app, client = start_grpc(max_batch_size=3, max_wait_ms=5000)
    engine = app.app.state.service.registry.get()
    gate, held = SegmentGate(engine.runner), HeldFirstRequest(engine)

    def zeros(count: int) -> Any:  # threshold 1: every segment runs
        shape = [count, 3, IMAGE_SIZE, IMAGE_SIZE]
        return _request([pixels(shape, [0.0] * int(np.prod(shape)))], threshold=1.0)

    def counted(name: str, **labels: str) -> float:
        return value(samples(app), name, **labels)

    stub = client.channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=type(zeros(1)).SerializeToString,
        response_deserializer=message("ModelInferResponse").FromString,
    )
    cancelled_before = counted("dynadapter_cancelled_images_total", model="tiny", version="1")
    gone_before = counted("dynadapter_requests_total", model="tiny", version="1", code="499")
    stayer = stub.future(zeros(1), timeout=30)
    assert held.holding.wait(20), "the stayer never got to its images"
    leaver = stub.future(zeros(2), timeout=30)
    assert held.queued.wait(20), "the leaver's images were never queued"
    held.release.set()
    assert gate.entered.wait(20), "the batch never started"
    leaver.cancel()  # while segment 0 runs on all three images
    for _ in range(400):
        if counted("dynadapter_requests_total", model="tiny", version="1", code="499") > gone_before:
            break
        time.sleep(0.05)
    gate.open.set()
    assert stayer.result().model_version == "1"
    assert gate.rows == [(0, 3)] + [(k, 1) for k in range(1, NUM_EXITS)]
    assert counted("dynadapter_cancelled_images_total", model="tiny", version="1") - cancelled_before == 2
    assert counted("dynadapter_requests_total", model="tiny", version="1", code="499") - gone_before == 1
    assert counted("dynadapter_grpc_requests_total", method="ModelInfer", code="CANCELLED") == 1
