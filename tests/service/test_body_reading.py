"""How every route reads its body, against a real server (issue 30): admitted to the bounded decode pool
before a byte is read, read within the deadline (408 for a client that trickles), compressed bodies
(gzip, deflate) read as they stream with their decompressed bytes counted (a zip bomb is 413, other
codings 415), strict length headers, and HEAD on the health and metrics routes."""

import base64
import gzip
import json
import select
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from dynadapter.service.decoding import peak_bytes
from dynadapter.service.middleware import ascii_length
from tests.support.service import IMAGE, ServiceProcess, samples, serving, value
from tests.support.tiny_onnx_model import png_bytes

MiB = 1024 * 1024
MAX_BODY = 4 * MiB
MAX_PIXELS = 65_536
WORKERS, QUEUE = 1, 1
TIMEOUT_S = 2  # the impatient server's request_timeout_s
PNG = png_bytes(0)
BODY_ROUTES = ["/classify", "/v2/models/tiny/infer", "/v2/models/tiny/versions/1/infer"]


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[ServiceProcess]:
    with serving(
        model_repo,
        max_body_bytes=str(MAX_BODY),
        max_pixels=str(MAX_PIXELS),
        decode_workers=str(WORKERS),
        decode_queue=str(QUEUE),
        max_wait_ms="2",
    ) as process:
        yield process


@pytest.fixture(scope="module")
def impatient_server(model_repo: Path) -> Iterator[ServiceProcess]:
    """A server whose deadline (request_timeout_s) is short, for the clients that trickle; the wall of
    stalled uploads needs the default one, so that no stalled upload times out while the wall is built."""
    with serving(model_repo, request_timeout_s=str(TIMEOUT_S), max_wait_ms="2") as process:
        yield process


def rss_bytes(server: ServiceProcess) -> int:
    """The server process's resident memory (VmRSS), in bytes."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def settled_rss(server: ServiceProcess) -> int:
    """VmRSS once it has stopped moving for half a second (at most 10 s of looking)."""
    last, stable_since, give_up = rss_bytes(server), time.monotonic(), time.monotonic() + 10
    while time.monotonic() - stable_since < 0.5 and time.monotonic() < give_up:
        time.sleep(0.1)
        now = rss_bytes(server)
        if now != last:
            last, stable_since = now, time.monotonic()
    return last


def connect(server: ServiceProcess) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    return sock


def head(path: str, headers: dict[str, str] | list[tuple[str, str]]) -> bytes:
    """A request's head, raw: headers as given (repeated, odd or non-ASCII ones included)."""
    items = headers.items() if isinstance(headers, dict) else headers
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in items)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one response (the server closes or says Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    start, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in start.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(start.split(b" ")[1]), body


def content_type(path: str) -> str:
    return "image/png" if path.startswith("/classify") else "application/json"


def oip_body(images: list[bytes]) -> dict:
    data = [base64.b64encode(image).decode() for image in images]
    return {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES", "data": data}]}


# Reading within the deadline.


def trickle(server: ServiceProcess, path: str, declared: int = 1000) -> tuple[int, bytes]:
    """Send a body one byte a tenth of a second until the server answers; its status and body.

    The server must answer before the body is complete (at this pace 1000 bytes take 100 s)."""
    with connect(server) as sock:
        sock.sendall(head(path, {"Content-Type": content_type(path), "Content-Length": str(declared)}))
        sent, give_up = 0, time.monotonic() + 30
        while not select.select([sock], [], [], 0.1)[0]:
            assert time.monotonic() < give_up and sent < declared - 1, "the server kept reading a trickling body"
            sock.sendall(b"{" if sent == 0 else b" ")
            sent += 1
        return read_response(sock)


@pytest.mark.parametrize("path", [*BODY_ROUTES, "/v2/repository/models/tiny/load", "/v2/repository/models/tiny/unload"])
def test_a_client_trickling_its_body_is_answered_408_before_it_has_sent_it(
    impatient_server: ServiceProcess, path: str
) -> None:
    status, body = trickle(impatient_server, path)
    assert status == 408, body
    message = json.loads(body)["error"]  # the protocol's shape under /v2
    if path == "/classify":
        assert message == {"code": "request_timeout", "message": "the request body did not arrive within 2 s"}
    else:
        assert message == "the request body did not arrive within 2 s"


def test_a_trickling_client_is_held_to_the_deadline_it_asked_for(server: ServiceProcess) -> None:
    before = samples(httpx.Client(base_url=server.url))
    status, body = trickle(server, "/classify?deadline_ms=1000")  # the service's own deadline is 30 s
    after = samples(httpx.Client(base_url=server.url))
    assert status == 408 and json.loads(body)["error"]["message"] == "the request body did not arrive within 1 s"
    counted = {"name": "dynadapter_requests_total", "model": "tiny", "version": "1", "code": "408"}
    assert value(after, **counted) - value(before, **counted) == 1


@pytest.mark.parametrize(
    "path", ["/v2/repository/index", "/v2/repository/models/tiny/load", "/v2/repository/models/tiny/unload"]
)
def test_the_repository_routes_take_small_bodies_only(server: ServiceProcess, path: str) -> None:
    # They take small JSON; a large declared body is refused before a byte of it is read.
    with connect(server) as sock:
        sock.sendall(head(path, {"Content-Length": str(1 * MiB)}))
        status, body = read_response(sock)
    assert status == 413 and "larger than 65536 bytes" in json.loads(body)["error"]


# A wall of stalled uploads: memory stays within the documented formula.


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_wall_of_stalled_uploads_holds_at_most_the_documented_memory(server: ServiceProcess, path: str) -> None:
    admitted, excess = WORKERS + QUEUE, 8
    declared = MAX_BODY
    counted = {"name": "dynadapter_requests_total", "model": "tiny", "version": "1", "code": "503"}
    refused_before = value(samples(httpx.Client(base_url=server.url)), **counted)
    before = settled_rss(server)
    stalled = [connect(server) for _ in range(admitted)]
    try:
        for sock in stalled:  # all but the last byte; the server reads them, as they are admitted
            sock.sendall(head(path, {"Content-Type": content_type(path), "Content-Length": str(declared)}))
            sock.sendall(b"{" + b" " * (declared - 2))
        for _ in range(excess):  # the head only: refused before their bodies are read (they never come)
            with connect(server) as sock:
                sock.sendall(head(path, {"Content-Type": content_type(path), "Content-Length": str(declared)}))
                status, body = read_response(sock)
                assert status == 503, body
                assert "queue is full" in body.decode()
        grown = settled_rss(server) - before
        assert value(samples(httpx.Client(base_url=server.url)), **counted) - refused_before == excess
        for sock in stalled:
            assert not select.select([sock], [], [], 0)[0], "a stalled upload was answered before its deadline"
    finally:
        for sock in stalled:
            sock.close()
    documented = peak_bytes(WORKERS, QUEUE, MAX_PIXELS, MAX_BODY)
    assert grown < documented + 8 * MiB, f"{grown / MiB:.1f} MiB held, documented {documented / MiB:.1f} MiB"


# Content-Encoding.


def compress(coding: str, data: bytes) -> bytes:
    return gzip.compress(data) if coding == "gzip" else zlib.compress(data)


def comparable(answer: dict) -> dict:
    return {key: value for key, value in answer.items() if key != "latency_ms"}


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compressed_classify_bodies_answer_as_uncompressed(server: ServiceProcess, coding: str) -> None:
    url = f"{server.url}/classify?mode=fast"
    plain = httpx.post(url, content=PNG, headers=IMAGE)
    assert plain.status_code == 200
    raw = httpx.post(url, content=compress(coding, PNG), headers=IMAGE | {"Content-Encoding": coding})
    assert raw.status_code == 200, raw.text
    assert comparable(raw.json()) == comparable(plain.json())
    form = httpx.Request("POST", url, files=[("file", ("a.png", PNG, "image/png"))])
    multipart = httpx.post(
        url,
        content=compress(coding, form.read()),
        headers={"Content-Type": form.headers["Content-Type"], "Content-Encoding": coding.upper()},
    )
    assert multipart.status_code == 200, multipart.text
    assert comparable(multipart.json()) == comparable(plain.json())


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compressed_oip_bodies_answer_as_uncompressed(server: ServiceProcess, coding: str) -> None:
    body = json.dumps(oip_body([PNG, png_bytes(1)])).encode()
    for path in BODY_ROUTES[1:]:
        plain = httpx.post(server.url + path, content=body)
        packed = httpx.post(server.url + path, content=compress(coding, body), headers={"Content-Encoding": coding})
        assert plain.status_code == packed.status_code == 200, packed.text
        assert packed.json() == plain.json()
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        tensor = triton.InferInput("image", [2], "BYTES")
        tensor.set_data_from_numpy(np.array([PNG, png_bytes(1)], dtype=object), binary_data=True)
        answers = [
            client.infer("tiny", [tensor], request_compression_algorithm=algorithm).as_numpy("probabilities")
            for algorithm in (None, coding)
        ]
    finally:
        client.close()
    np.testing.assert_array_equal(answers[1], answers[0])


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_zip_bomb_is_413_without_being_inflated(server: ServiceProcess, path: str) -> None:
    bomb = gzip.compress(b"\0" * (64 * MiB), compresslevel=9)  # about 64 KiB on the wire
    before = settled_rss(server)
    response = httpx.post(
        server.url + path, content=bomb, headers={"Content-Type": content_type(path), "Content-Encoding": "gzip"}
    )
    grown = settled_rss(server) - before
    assert response.status_code == 413
    assert f"larger than {MAX_BODY} bytes" in response.text
    assert grown < MAX_BODY + 8 * MiB, f"{grown / MiB:.1f} MiB for a {len(bomb)}-byte bomb"


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "x-unknown", "gzip, gzip", "gzip, br", "deflate, gzip"])
@pytest.mark.parametrize("path", BODY_ROUTES)
def test_other_codings_are_415(server: ServiceProcess, path: str, coding: str) -> None:
    response = httpx.post(
        server.url + path, content=PNG, headers={"Content-Type": content_type(path), "Content-Encoding": coding}
    )
    assert response.status_code == 415, response.text
    assert "send gzip, deflate or identity" in response.text


def test_identity_is_accepted_and_a_corrupt_body_is_400(server: ServiceProcess) -> None:
    url = f"{server.url}/classify"
    assert httpx.post(url, content=PNG, headers=IMAGE | {"Content-Encoding": "identity"}).status_code == 200
    assert httpx.post(url, content=PNG, headers=IMAGE | {"Content-Encoding": "gzip, identity"}).status_code == 400
    corrupt = httpx.post(url, content=PNG, headers=IMAGE | {"Content-Encoding": "gzip"})
    assert corrupt.status_code == 400 and "not valid gzip data" in corrupt.json()["error"]["message"]
    cut = httpx.post(url, content=gzip.compress(PNG)[:-20], headers=IMAGE | {"Content-Encoding": "gzip"})
    assert cut.status_code == 400 and "cut short" in cut.json()["error"]["message"]
    members = gzip.compress(PNG[:100]) + gzip.compress(PNG[100:])  # gzip(1) reads these as one body
    assert httpx.post(url, content=members, headers=IMAGE | {"Content-Encoding": "gzip"}).status_code == 200


# HEAD on the probes.


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready"])
def test_head_answers_as_get_without_a_body(server: ServiceProcess, path: str) -> None:
    got = httpx.get(server.url + path)
    headed = httpx.head(server.url + path)
    assert headed.status_code == got.status_code == 200
    assert headed.headers["content-type"] == got.headers["content-type"]
    assert headed.content == b""


# Strict length headers.


def oip_binary_request(header_length: str) -> tuple[bytes, int]:
    """A raw binary-extension OIP request of one image with this header length; and the JSON's true length."""
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 4 + len(PNG)}}
            ]
        }
    ).encode()
    body = header + struct.pack("<I", len(PNG)) + PNG
    return head(
        "/v2/models/tiny/infer", {"Content-Length": str(len(body)), "Inference-Header-Content-Length": header_length}
    ) + body, len(header)


@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Length", "abc")],
        [("Content-Length", "-1")],
        [("Content-Length", "+5")],
        [("Content-Length", "5, 6")],
        [("Content-Length", "5"), ("Content-Length", "6")],
        [("Content-Length", "1e3")],
        [("Content-Length", "٥")],
        [("Content-Length", "9" * 40)],
    ],
)
@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_malformed_content_length_is_400(server: ServiceProcess, path: str, headers: list[tuple[str, str]]) -> None:
    with connect(server) as sock:
        sock.sendall(head(path, [("Content-Type", content_type(path)), *headers]) + b"12345")
        status, _ = read_response(sock)
    assert status == 400


@pytest.mark.parametrize("value", ["abc", "+5", "-5", "٥", "５", "5.0", "1e3", "0x10", "9" * 40, "9" * 5000, "99999"])
def test_a_malformed_inference_header_content_length_is_400(server: ServiceProcess, value: str) -> None:
    request, _ = oip_binary_request(value)
    with connect(server) as sock:
        sock.sendall(request)
        status, body = read_response(sock)
    assert status == 400, body
    assert "Inference-Header-Content-Length" in json.loads(body)["error"]


def test_a_well_formed_inference_header_content_length_is_read(server: ServiceProcess) -> None:
    _, length = oip_binary_request("0")
    request, _ = oip_binary_request(str(length))
    with connect(server) as sock:
        sock.sendall(request)
        status, body = read_response(sock)
    assert status == 200, body


def test_a_length_header_is_ascii_decimal_digits_only() -> None:
    # Starlette reads header bytes as latin-1, so "٥" cannot arrive over HTTP/1.1; a gRPC transport's
    # metadata is str, and str.isdigit() would take it.
    assert [ascii_length(value) for value in ["0", "17", "007"]] == [0, 17, 7]
    assert all(ascii_length(value) is None for value in ["", "٥", "５", "²", "+5", " 5", "5 ", "-5", "9" * 5000])


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        'multipart/form-data; boundary="unterminated',
        "multipart/form-data; boundary",
        "multipart/form-data; =abc",
        "multipart/form-data; boundary=" + "a" * 300,
    ],
)
def test_malformed_content_type_parameters_are_400(server: ServiceProcess, content_type: str) -> None:
    form = b'--abc\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + PNG + b"\r\n--abc--\r\n"
    response = httpx.post(f"{server.url}/classify", content=form, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_request"
