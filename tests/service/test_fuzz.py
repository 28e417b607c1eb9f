"""Property-based fuzzing (hypothesis) of what a network client controls, against a real server: OIP infer
bodies and headers, and every route that takes a model name or version. Whatever is sent, the answer is a
documented 4xx or a 200, never a 5xx or a hang, the error has the route's documented shape, the server stays
live, and nothing outside the model repository is ever loaded.

The runs are derandomized (the same examples on every run, so CI is reproducible); set
HYPOTHESIS_PROFILE=explore for a longer, random search.
"""

import base64
import gzip
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.service import ServiceProcess, serving
from tests.support.tiny_onnx_model import IMAGE_SIZE, TinyWeights, png_bytes, write_escaping_layout

settings.register_profile(
    "ci", max_examples=120, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck), database=None
)
settings.register_profile("explore", max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

PNG = png_bytes(0)
HEADER = "Inference-Header-Content-Length"
TIMEOUT_S = 20  # a request that takes longer than this is a hang (the server's own deadline is 5 s)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory, weights: TinyWeights) -> Path:
    """A repository serving tiny beside copies of a model version that lie OUTSIDE it (`..`, a model link,
    a version link): `write_escaping_layout`. None may ever be served."""
    root = tmp_path_factory.mktemp("fuzz")
    write_escaping_layout(root, weights)
    return root


@pytest.fixture(scope="module")
def server(layout: Path) -> Iterator[ServiceProcess]:
    # `models` lists the one model the repository may serve: the symlinked folder is not loaded at start.
    with serving(layout / "repo", models="tiny", max_wait_ms="1", request_timeout_s="5") as process:
        yield process


def check_answer(response: httpx.Response, oip: bool) -> None:
    """A 200, or a 4xx with the route family's error shape; never a 5xx."""
    request = response.request
    sent = f"{request.method} {request.url} {dict(request.headers)} {request.content[:300]!r}"
    assert response.status_code < 500, f"{response.status_code}: {response.text[:300]} for {sent}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error, str) if oip else set(error) == {"code", "message"}, response.text[:300]


def assert_live(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").status_code == 200


# OIP infer bodies: a valid request, mutated part by part.

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324]),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
PARAMETER_NAMES = st.sampled_from(
    ["threshold", "mode", "budget", "timeout", "binary_data_output", "binary_data_size", "classification", "x"]
)
# Numbers JSON cannot spell but Python's json module writes (NaN, Infinity) and numbers past float64.
RAW_NUMBERS = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" * 400, "0x10", "1_0", "-", "."])


def pixels_input(count: int) -> dict[str, Any]:
    return {"name": "pixels", "shape": [count, 3, IMAGE_SIZE, IMAGE_SIZE], "datatype": "FP32"}


@st.composite
def infer_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of an OIP infer request: JSON or the binary extension, some parts mutated."""
    count = draw(st.integers(min_value=0, max_value=3))
    kind = draw(st.sampled_from(["image-json", "image-binary", "pixels-json", "pixels-binary"]))
    tensor: dict[str, Any]
    binary = b""
    if kind.startswith("image"):
        tensor = {"name": "image", "shape": [count], "datatype": "BYTES"}
        if kind == "image-json":
            tensor["data"] = [base64.b64encode(PNG).decode()] * count
        else:
            binary = b"".join(struct.pack("<I", len(PNG)) + PNG for _ in range(count))
            tensor["parameters"] = {"binary_data_size": len(binary)}
    else:
        tensor = pixels_input(count)
        scale = draw(st.sampled_from([0.0, 1.0, 3e38, -3e38, 1e-45]))
        values = [scale] * (count * 3 * IMAGE_SIZE * IMAGE_SIZE)
        if kind == "pixels-json":
            tensor["data"] = values
        else:
            binary = struct.pack(f"<{len(values)}f", *values)
            tensor["parameters"] = {"binary_data_size": len(binary)}
    if draw(st.booleans()):  # mutate the tensor's fields
        field = draw(st.sampled_from(["name", "shape", "datatype", "parameters", "data"]))
        tensor[field] = draw(JSON_VALUES | st.dictionaries(PARAMETER_NAMES, JSON_VALUES, max_size=3))
    request: dict[str, Any] = {"inputs": [tensor]}
    if draw(st.booleans()):
        request["parameters"] = draw(st.dictionaries(PARAMETER_NAMES, JSON_VALUES, max_size=3))
    if draw(st.booleans()):
        names = st.sampled_from(["probabilities", "exit_index", "gflops", "exit_reason", "nope"])
        request["outputs"] = [
            {"name": name, "parameters": draw(st.dictionaries(PARAMETER_NAMES, JSON_VALUES, max_size=2))}
            for name in draw(st.lists(names, max_size=3))
        ]
    if draw(st.booleans()):
        request["id"] = draw(JSON_VALUES)
    text = json.dumps(request)
    if draw(st.booleans()):  # a number JSON does not allow, in place of the first number of the body
        text = text.replace("0", draw(RAW_NUMBERS), 1)
    header = text.encode()
    headers = {"content-type": "application/json"}
    if binary or draw(st.booleans()):
        length = draw(
            st.sampled_from([str(len(header)), str(len(header) + 1), "-1", "+5", "5.0", "0x5", "²", "", "9" * 30])
        )
        headers = {"content-type": "application/octet-stream", HEADER: length}
    body = header + binary
    if draw(st.booleans()):
        encoding = draw(st.sampled_from(["gzip", "deflate", "br", "identity", "gzip, gzip", "x-nope"]))
        headers["content-encoding"] = encoding
        if draw(st.booleans()):
            body = gzip.compress(body) if encoding == "gzip" else body
    if draw(st.booleans()):  # a truncated or padded body
        body = body[: draw(st.integers(min_value=0, max_value=len(body)))] + draw(st.binary(max_size=8))
    return body, headers


def test_no_oip_infer_body_or_header_gets_a_5xx(server: ServiceProcess) -> None:
    paths = ["/v2/models/tiny/infer", "/v2/models/tiny/versions/1/infer"]
    with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as client:

        @given(request=infer_requests(), path=st.sampled_from(paths))
        @settings(settings.get_profile(PROFILE))
        def no_5xx(request: tuple[bytes, dict[str, str]], path: str) -> None:
            body, headers = request
            raw_headers = {key: value.encode("latin-1") for key, value in headers.items()}  # as sent on the wire
            check_answer(client.post(path, content=body, headers=raw_headers), oip=True)

        no_5xx()
        assert_live(client)
        # Still serving: a plain request answers.
        valid = {
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(PNG).decode()]}]
        }
        assert client.post(paths[0], json=valid).json()["model_name"] == "tiny"


# Names and versions: every route that takes one.

NAME_ROUTES = [
    ("POST", "/v2/repository/models/{name}/load"),
    ("GET", "/v2/models/{name}"),
    ("GET", "/v2/models/{name}/ready"),
    ("GET", "/v2/models/{name}/config"),
    ("POST", "/v2/models/{name}/infer"),
    ("GET", "/v2/models/{name}/versions/{version}"),
    ("GET", "/v2/models/{name}/versions/{version}/ready"),
    ("GET", "/v2/models/{name}/versions/{version}/config"),
    ("POST", "/v2/models/{name}/versions/{version}/infer"),
    ("POST", "/classify?model={name}&version={version}"),
    ("POST", "/v2/repository/models/{name}/unload"),
]
HOSTILE = st.sampled_from(
    ["..", ".", "%2E%2E", "%2e", "...", "escape", "a%2Fb", "..%2F..", "a%5Cb", "%00", "x%0A", "tiny%00", "~", "1"]
)
NAMES = st.one_of(HOSTILE, st.text(min_size=1, max_size=40).map(lambda text: quote(text, safe="")))
VERSIONS = st.one_of(
    st.sampled_from(["1", "01", "../1", "..%2F1", "１", "٣", "-1", "1.0", "+1", "9" * 40, "%31", "1%00"]),
    st.text(min_size=1, max_size=10).map(lambda text: quote(text, safe="")),
)


def test_no_name_or_version_gets_a_5xx_or_reaches_outside_the_repository(server: ServiceProcess, layout: Path) -> None:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as client:
        before = client.post("/v2/repository/index").json()

        @given(route=st.sampled_from(NAME_ROUTES), name=NAMES, version=VERSIONS)
        @settings(settings.get_profile(PROFILE))
        def confined(route: tuple[str, str], name: str, version: str) -> None:
            method, template = route
            if name in ("tiny", "tiny%00") and template.endswith("/unload"):
                return  # taking the served model away would only test the next examples against nothing
            url = template.format(name=name, version=version)
            content, headers = (PNG, {"content-type": "image/png"}) if "classify" in url else (b"", {})
            response = client.request(method, url, content=content, headers=headers)
            sent = response.request.url.path  # httpx resolves `.` and `..` segments before sending
            check_answer(response, oip=sent.startswith("/v2"))
            # Only the model of the repository answers 200, and only under its own name.
            if response.status_code == 200 and sent.startswith("/v2/models/"):
                assert response.json().get("name", response.json().get("model_name")) == "tiny"
            if response.status_code >= 400:
                assert str(layout) not in response.text, "an error showed a server path"

        confined()
        assert_live(client)
        served = {
            entry["name"] for entry in client.post("/v2/repository/index").json() if entry.get("state") == "READY"
        }
        assert served == {"tiny"}, f"index before: {before}"
