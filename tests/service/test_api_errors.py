"""Every malformed request gets the right status and the JSON error shape; none gets a 500."""

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np
import pytest
from fastapi.testclient import TestClient

from dynadapter.service.main import create_app
from tests.support.service import IMAGE, assert_error, wait_ready
from tests.support.stand_ins import gate_runner
from tests.support.tiny_onnx_model import png_bytes, png_header_claiming

PNG = png_bytes(0, (16, 16))


@pytest.mark.parametrize(
    ("query", "content", "headers", "status", "code"),
    [
        ("", b"", IMAGE, 400, "invalid_image"),
        ("", b"definitely not an image", IMAGE, 400, "invalid_image"),
        ("", PNG[:-30], IMAGE, 400, "invalid_image"),
        ("", png_header_claiming(100_000, 100_000), IMAGE, 413, "image_too_large"),
        ("", PNG, {"content-type": "application/json"}, 415, "unsupported_media_type"),
        ("", PNG, {"content-type": "text/plain"}, 415, "unsupported_media_type"),
        ("", PNG, {}, 415, "unsupported_media_type"),
        ("?threshold=2", PNG, IMAGE, 422, "invalid_parameter"),
        ("?threshold=-0.1", PNG, IMAGE, 422, "invalid_parameter"),
        ("?threshold=nan", PNG, IMAGE, 422, "invalid_parameter"),
        ("?threshold=inf", PNG, IMAGE, 422, "invalid_parameter"),
        ("?threshold=abc", PNG, IMAGE, 422, "invalid_parameter"),
        ("?threshold=0.5&mode=fast", PNG, IMAGE, 422, "invalid_parameter"),
        ("?mode=fast&budget=0.5", PNG, IMAGE, 422, "invalid_parameter"),
        ("?mode=turbo", PNG, IMAGE, 422, "invalid_parameter"),
        ("?budget=0", PNG, IMAGE, 422, "invalid_parameter"),
        ("?budget=1.5", PNG, IMAGE, 422, "invalid_parameter"),
        ("?top_k=0", PNG, IMAGE, 422, "invalid_parameter"),
        ("?top_k=6", PNG, IMAGE, 422, "invalid_parameter"),
    ],
)
def test_bad_requests(client: TestClient, query: str, content: bytes, headers: dict, status: int, code: str) -> None:
    assert_error(client.post(f"/classify{query}", content=content, headers=headers), status, code)


def test_parameter_errors_name_the_parameter(client: TestClient) -> None:
    response = client.post("/classify?threshold=2", content=PNG, headers=IMAGE)
    assert assert_error(response, 422, "invalid_parameter")["error"]["message"].startswith("threshold:")
    response = client.post("/classify?threshold=0.5&budget=0.5", content=PNG, headers=IMAGE)
    message = assert_error(response, 422, "invalid_parameter")["error"]["message"]
    assert "at most one of threshold, mode and budget" in message


def test_an_unknown_parameter_is_refused_not_ignored(client: TestClient) -> None:
    """A misspelled knob would otherwise be answered at the default mode, as if it had been read."""
    response = client.post("/classify?treshold=0.5", content=PNG, headers=IMAGE)
    message = assert_error(response, 422, "invalid_parameter")["error"]["message"]
    assert message.startswith("treshold:") and "Extra inputs are not permitted" in message


def test_body_over_the_limit(start_client: Callable[..., TestClient]) -> None:
    client = start_client(max_body_bytes=1000)
    big = png_bytes(0, (64, 64))
    assert len(big) > 1000
    assert_error(client.post("/classify", content=big, headers=IMAGE), 413, "payload_too_large")
    assert_error(client.post("/classify", files={"file": ("x.png", big, "image/png")}), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        yield big[:600]
        yield big[600:]

    assert_error(client.post("/classify", content=chunks(), headers=IMAGE), 413, "payload_too_large")


def test_image_over_the_pixel_limit(start_client: Callable[..., TestClient]) -> None:
    client = start_client(max_pixels=1000)
    response = client.post("/classify", content=png_bytes(0, (40, 40)), headers=IMAGE)
    assert_error(response, 413, "image_too_large")
    assert client.post("/classify", content=png_bytes(0, (25, 40)), headers=IMAGE).status_code == 200


def test_multipart_without_a_file(client: TestClient) -> None:
    assert_error(client.post("/classify", files={"other": ("x.png", PNG)}), 422, "invalid_parameter")
    assert_error(client.post("/classify", files={"file": (None, "a text field")}), 422, "invalid_parameter")
    unterminated = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n' + PNG[:50]
    multipart = {"content-type": "multipart/form-data; boundary=b"}
    assert_error(client.post("/classify", content=unterminated, headers=multipart), 422, "invalid_parameter")


def test_multipart_without_boundary(client: TestClient) -> None:
    response = client.post("/classify", content=b"abc", headers={"content-type": "multipart/form-data"})
    assert_error(response, 400, "bad_request")


def test_random_bytes_never_produce_a_500(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    content_types = ["image/png", "image/jpeg", "image/x-whatever", "multipart/form-data; boundary=b"]
    for i in range(60):
        data = rng.integers(0, 256, int(rng.integers(0, 2000)), dtype=np.uint8).tobytes()
        if i % 3 == 0:
            data = PNG[: int(rng.integers(8, len(PNG)))] + data  # a PNG start, then noise
        response = client.post("/classify", content=data, headers={"content-type": content_types[i % 4]})
        assert response.status_code in (400, 413, 422), (i, response.text)
        assert "error" in response.json()


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/classify"), 405, "method_not_allowed")


def test_not_ready_before_the_model_is_loaded(make_settings: Callable) -> None:
    client = TestClient(create_app(make_settings()))  # no lifespan: nothing loaded
    response = client.post("/classify", content=PNG, headers=IMAGE)
    assert_error(response, 503, "not_ready")
    assert response.headers["retry-after"] == "1"
    assert_error(client.get("/v1/models"), 503, "not_ready")


def test_deadline_gives_504(start_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch) -> None:
    client = start_client(request_timeout_s=0.2)
    gate = gate_runner(client, monkeypatch)
    try:
        assert_error(client.post("/classify", content=PNG, headers=IMAGE), 504, "timeout")
    finally:
        gate.open.set()
    assert client.post("/classify", content=PNG, headers=IMAGE).status_code == 200


def test_full_queue_gives_503_with_retry_after(
    start_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = start_client(max_batch_size=1, max_queue=1)
    gate = gate_runner(client, monkeypatch)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(client.post, "/classify", content=PNG, headers=IMAGE)
        assert gate.entered.wait(10)  # the first request holds the only inference slot
        others = [pool.submit(client.post, "/classify", content=PNG, headers=IMAGE) for _ in range(2)]
        # The queue (size 1) holds one of them; the other is refused at once, with the gate still shut.
        done, _ = wait(others, timeout=10, return_when=FIRST_COMPLETED)
        refused = done.pop().result()
        gate.open.set()
        statuses = sorted([first.result().status_code] + [f.result().status_code for f in others])
    assert_error(refused, 503, "overloaded")
    assert int(refused.headers["retry-after"]) >= 1
    assert statuses == [200, 200, 503]


def test_an_unexpected_failure_is_a_json_500_and_the_service_goes_on(
    make_settings: Callable, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(create_app(make_settings()), raise_server_exceptions=False) as client:
        wait_ready(client)
        runner = client.app.state.service.registry.get().runner  # type: ignore[attr-defined]
        monkeypatch.setattr(runner, "cascade", lambda images, thresholds, *rest: 1 / 0)
        response = client.post("/classify", content=PNG, headers=IMAGE)
        body = assert_error(response, 500, "internal")
        assert "ZeroDivisionError" not in body["error"]["message"]
        assert "ZeroDivisionError" in caplog.text  # logged for the operator
        monkeypatch.undo()
        assert client.post("/classify", content=PNG, headers=IMAGE).status_code == 200
        metrics = client.get("/metrics").text
    assert 'dynadapter_requests_total{code="500",model="tiny",version="1"} 1.0' in metrics
