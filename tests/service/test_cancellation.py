"""A client that goes away: its images leave the batch before the next segment, counted, never a 5xx;
a request cut short by SIGTERM's shutdown timeout: 503 with Connection: close, no traceback.

Against real uvicorn servers: in a thread of this process where the test holds the batch at a gate
(the tiny model is too fast to catch in the middle), and as a child process for SIGTERM.
"""

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI

from dynadapter.service import main
from dynadapter.service.main import create_app
from dynadapter.service.settings import Settings
from tests.support.service import Samples, samples, serving, value
from tests.support.stand_ins import HeldFirstRequest, SegmentGate
from tests.support.tiny_onnx_model import IMAGE_SIZE, NUM_EXITS, png_bytes

INFER = "/v2/models/tiny/infer"


def infer_body(count: int) -> bytes:
    """An OIP request for `count` zero images that never leave early (threshold 1: every segment runs)."""
    shape = [count, 3, IMAGE_SIZE, IMAGE_SIZE]
    tensor = {"name": "pixels", "datatype": "FP32", "shape": shape, "data": [0.0] * int(np.prod(shape))}
    return json.dumps({"parameters": {"threshold": 1.0}, "inputs": [tensor]}).encode()


@contextmanager
def uvicorn_thread(app: FastAPI, shutdown_timeout_s: int | None = None) -> Iterator[tuple[str, uvicorn.Server]]:
    """A real uvicorn server for `app` (the service's own, as `serve` runs it) on a loopback port, in a
    thread of this process: its URL and the server, once ready.

    The socket is bound here and handed over, so no other process can take the port in between."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listening.getsockname()[1]}"
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=shutdown_timeout_s)
    server = main._Server(config, app.state.shutdown)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            assert thread.is_alive(), "the server stopped"
            if server.started and httpx.get(f"{url}/readyz").status_code == 200:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the server never became ready")
        yield url, server
    finally:
        server.should_exit = True
        thread.join(30)
        listening.close()


def counted(snapshot: Samples, name: str, **labels: str) -> float:
    return value(snapshot, name, model="tiny", version="1", **labels)


def server_errors(snapshot: Samples) -> float:
    return sum(
        v
        for (name, labels), v in snapshot.items()
        if name == "dynadapter_requests_total" and dict(labels)["code"].startswith("5")
    )


def oip_request(count: int) -> tuple[str, dict[str, str], bytes]:
    return INFER, {"content-type": "application/json"}, infer_body(count)


def classify_request(count: int) -> tuple[str, dict[str, str], bytes]:
    """/classify with `count` multipart `file` parts, at threshold 1 (every segment runs)."""
    parts = [("file", (f"{i}.png", png_bytes(i), "image/png")) for i in range(count)]
    built = httpx.Request("POST", "http://x/classify?threshold=1", files=parts)
    return "/classify?threshold=1", {"content-type": built.headers["content-type"]}, built.read()


@pytest.mark.parametrize("build", [oip_request, classify_request], ids=["oip", "classify"])
def test_a_client_that_disconnects_leaves_the_batch_before_the_next_segment(model_repo: Path, build: Any) -> None:
    # Three images make a full batch (max_batch_size 3): the stayer is held, admitted, until the leaver's two
    # images are queued, and their batch waits for it (a long max_wait_ms never cuts that short).
    settings = Settings(model_repo=model_repo, providers="cpu", intra_op_threads=1, max_batch_size=3, max_wait_ms=5000)
    app = create_app(settings)
    with uvicorn_thread(app) as (url, _), ThreadPoolExecutor(1) as pool, httpx.Client(base_url=url) as http:
        engine = app.state.service.registry.get()
        gate, held = SegmentGate(engine.runner), HeldFirstRequest(engine)
        before = samples(http)
        path, headers, body = build(1)
        stayer = pool.submit(http.post, path, content=body, headers=headers, timeout=30)
        assert held.holding.wait(20), "the stayer never got to its images"
        host, port = url.removeprefix("http://").split(":")
        leaver = socket.create_connection((host, int(port)))
        path, headers, body = build(2)
        head = "".join(f"{name}: {text}\r\n" for name, text in headers.items())
        leaver.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert held.queued.wait(20), "the leaver's images were never queued"
        held.release.set()
        assert gate.entered.wait(20), "the batch never started"
        leaver.close()  # while segment 0 runs on all three images
        for _ in range(400):  # the server answers the leaver 499 (into the void) once it sees it gone
            if counted(samples(http), "dynadapter_requests_total", code="499") > counted(
                before, "dynadapter_requests_total", code="499"
            ):
                break
            time.sleep(0.05)
        gate.open.set()
        answer = stayer.result()
        after = samples(http)
    assert answer.status_code == 200, answer.text
    # The leaver's two rows left after segment 0; the stayer ran on to the last exit.
    assert gate.rows == [(0, 3)] + [(k, 1) for k in range(1, NUM_EXITS)]
    cancelled = "dynadapter_cancelled_images_total"
    assert counted(after, cancelled) - counted(before, cancelled) == 2
    delta = {
        code: counted(after, "dynadapter_requests_total", code=code)
        - counted(before, "dynadapter_requests_total", code=code)
        for code in ("200", "499")
    }
    assert delta == {"200": 1, "499": 1}
    assert server_errors(after) == 0


def test_shutdown_answers_a_request_still_in_the_batch_503(model_repo: Path) -> None:
    """The shutdown timeout passes while the request's image is still in a segment: 503 shutting_down,
    Connection: close, not a 500."""
    settings = Settings(model_repo=model_repo, providers="cpu", intra_op_threads=1, max_wait_ms=1)
    app = create_app(settings)
    with uvicorn_thread(app, shutdown_timeout_s=1) as (url, server), ThreadPoolExecutor(1) as pool:
        gate = SegmentGate(app.state.service.registry.get().runner)
        try:
            pending = pool.submit(httpx.post, f"{url}{INFER}", content=infer_body(1), timeout=30)
            assert gate.entered.wait(20), "the batch never started"
            server.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
            answer = pending.result()
        finally:
            gate.open.set()
    assert answer.status_code == 503, answer.text
    assert answer.headers["connection"] == "close" and answer.headers["retry-after"] == "1"
    assert answer.json() == {"error": "the service is shutting down and the request could not finish in time; retry"}


def test_the_cancelled_images_counter_is_declared_at_zero(model_repo: Path) -> None:
    with serving(model_repo) as server:
        snapshot = samples(httpx.Client(base_url=server.url))
    assert ("dynadapter_cancelled_images_total", frozenset({("model", "tiny"), ("version", "1")})) in snapshot
    assert counted(snapshot, "dynadapter_cancelled_images_total") == 0


@pytest.mark.parametrize(("path", "content_type"), [(INFER, "application/json"), ("/classify", "image/png")])
def test_sigterm_answers_a_stalled_upload_503_with_connection_close(
    model_repo: Path, path: str, content_type: str
) -> None:
    with serving(model_repo, shutdown_timeout_s="1") as server:
        host, port = server.url.removeprefix("http://").split(":")
        stalled = socket.create_connection((host, int(port)), timeout=30)
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 1000\r\n\r\n"
        stalled.sendall(head.encode() + b"{" * 10)  # 10 of the 1000 bytes, then nothing
        with httpx.Client(base_url=server.url) as http:
            for _ in range(400):
                inflight = 'dynadapter_inflight_requests{model="tiny",version="1"} 1.0'
                if inflight in http.get("/metrics").text:
                    break
                time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        answer = b""
        while chunk := stalled.recv(65536):
            answer += chunk
        stalled.close()
        returncode = server.stop()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable", answer
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:])}
    assert headers["connection"] == "close" and headers["retry-after"] == "1"
    error = json.loads(body)["error"]
    message = error if path.startswith("/v2") else error["message"]
    assert message == "the service is shutting down and the request could not finish in time; retry"
    # uvicorn re-raises SIGTERM once the lifespan shutdown is done, so that the exit status says why.
    assert returncode in (0, -signal.SIGTERM), server.output
    assert "Application shutdown complete" in server.output
    assert "Traceback" not in server.output and "Exception in ASGI application" not in server.output
    assert f"shutdown timeout: answered POST {path} with 503" in server.output
