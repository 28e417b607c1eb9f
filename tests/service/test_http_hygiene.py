"""Several images per /classify request, and the body forms real clients produce: curl, requests, httpx,
a browser's form; a client that hangs up mid-upload is 499 in the metrics, never a 5xx or a traceback."""

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import requests
from fastapi.testclient import TestClient

from tests.support.service import IMAGE, ServiceProcess, samples, serving, value
from tests.support.tiny_onnx_model import png_bytes

IMAGES = [png_bytes(seed) for seed in range(4)]


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[ServiceProcess]:
    with serving(model_repo, max_images_per_request="4") as process:
        yield process


def test_several_file_parts_answer_a_list_in_their_order(start_client: Callable[..., TestClient]) -> None:
    client = start_client(max_images_per_request=4)
    singles = [client.post("/classify?mode=fast", content=data, headers=IMAGE).json() for data in IMAGES]
    before = samples(client)
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(IMAGES)]
    answers = client.post("/classify?mode=fast", files=files).json()
    after = samples(client)
    assert isinstance(answers, list) and len(answers) == 4
    for single, answer in zip(singles, answers, strict=True):
        assert (answer["class_id"], answer["exit"], answer["gflops"]) == (
            single["class_id"],
            single["exit"],
            single["gflops"],
        )
    exits = [answer["exit"]["index"] for answer in answers]
    for k in set(exits):  # each image counted once, at its own exit; the request once
        delta = value(after, "dynadapter_exits_total", model="tiny", version="1", exit=str(k)) - value(
            before, "dynadapter_exits_total", model="tiny", version="1", exit=str(k)
        )
        assert delta == exits.count(k)
    requests_delta = value(after, "dynadapter_requests_total", model="tiny", version="1", code="200") - value(
        before, "dynadapter_requests_total", model="tiny", version="1", code="200"
    )
    assert requests_delta == 1
    one = client.post("/classify", files=[("file", ("a.png", IMAGES[0], "image/png"))]).json()
    assert isinstance(one, dict)  # one part: one answer, as before


def test_more_images_than_the_limit_is_413(start_client: Callable[..., TestClient]) -> None:
    client = start_client(max_images_per_request=2)
    files = [("file", (f"{i}.png", IMAGES[0], "image/png")) for i in range(3)]
    response = client.post("/classify", files=files)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_many_images"
    assert client.post("/classify", files=files[:2]).status_code == 200


def test_curl_forms(server: ServiceProcess, tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(IMAGES[0])

    def curl(*args: str) -> tuple[int, str]:
        done = subprocess.run(
            ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", *args, f"{server.url}/classify"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        body, _, code = done.stdout.rpartition("\n")
        return int(code), body

    assert curl("-F", f"file=@{image}")[0] == 200
    assert curl("-F", f"file=@{image};type=image/png", "-F", f"file=@{image}")[0] == 200
    assert curl("-H", "Content-Type: image/png", "--data-binary", f"@{image}")[0] == 200
    assert curl("-T", str(image), "-X", "POST", "-H", "Content-Type: image/png")[0] == 200  # chunked upload
    code, body = curl("-F", f"file=<{image}")  # the file's content as a text field, no filename
    assert code == 422 and "file upload" in body
    code, body = curl("--data-binary", f"@{image}")  # curl's default: application/x-www-form-urlencoded
    assert code == 415 and "multipart/form-data" in body
    code, body = curl("-F", f"image=@{image}")
    assert code == 422 and "no complete part named 'file'" in body


def test_requests_and_httpx_forms(server: ServiceProcess) -> None:
    url = f"{server.url}/classify"
    assert requests.post(url, files={"file": IMAGES[0]}, timeout=30).status_code == 200  # no filename, no type
    assert requests.post(url, files={"file": ("a.png", IMAGES[0])}, timeout=30).status_code == 200
    assert requests.post(url, data=IMAGES[0], headers=IMAGE, timeout=30).status_code == 200
    assert httpx.post(url, files={"file": ("a.png", IMAGES[0], "application/octet-stream")}).status_code == 200
    assert httpx.post(url, content=iter([IMAGES[0][:50], IMAGES[0][50:]]), headers=IMAGE).status_code == 200
    response = httpx.post(url, data={"file": "not a file"})
    assert response.status_code == 415  # urlencoded form


def test_browser_form_with_an_empty_file_and_a_broken_multipart(server: ServiceProcess) -> None:
    url = f"{server.url}/classify"
    # A browser's <input type=file> left empty still sends a part: filename "" and no bytes.
    boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
    empty = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename=""\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n\r\n--{boundary}--\r\n"
    ).encode()
    response = httpx.post(url, content=empty, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 400
    assert response.json()["error"] == {"code": "invalid_image", "message": "empty image"}
    cut = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'.encode() + IMAGES[0]
    response = httpx.post(url, content=cut, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 422 and "no complete part named 'file'" in response.json()["error"]["message"]


def test_a_client_that_hangs_up_mid_upload_is_499_without_a_traceback(model_repo: Path) -> None:
    with serving(model_repo) as server:
        host, port = server.url.removeprefix("http://").split(":")
        for path, content_type in (("/classify", "image/png"), ("/v2/models/tiny/infer", "application/json")):
            with socket.create_connection((host, int(port))) as sock:
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 100000\r\n\r\n"
                )
                sock.sendall(head.encode() + b"x" * 1000)
                time.sleep(0.3)  # the route is reading the body when the client goes
        deadline = time.monotonic() + 10
        client = httpx.Client(base_url=server.url)
        while value(samples(client), "dynadapter_requests_total", model="tiny", version="1", code="499") < 2:
            assert time.monotonic() < deadline, "the hang-ups were not counted as 499"
            time.sleep(0.05)
        codes = {label[1] for key in samples(client) for label in key[1] if label[0] == "code"}
    assert not any(code.startswith("5") for code in codes)
    assert "Traceback" not in server.output and " ERROR " not in server.output
    assert "client closed the connection" in server.output
