"""No input gets a 5xx (issue #30, item 4), against a real uvicorn server.

Every query parameter of /classify and every OIP parameter at its boundary values (0, -0, negative,
huge, NaN, Infinity, empty, the wrong JSON type, very long), inputs that drive the model to
non-finite scores, and the requests Triton refuses (a duplicated output, `data` with
`binary_data_size`).
"""

import base64
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from dynadapter.service.oip import HEADER_LENGTH
from tests.support.service import IMAGE, ServiceProcess, samples, serving, value
from tests.support.tiny_onnx_model import IMAGE_SIZE, NUM_CLASSES, TinyWeights, png_bytes, write_model_version

PNG = png_bytes(0)
INFER = "/v2/models/tiny/infer"
LONG = "x" * 20_000
HUGE_INT = 2**64
PIXELS_SHAPE = [1, 3, IMAGE_SIZE, IMAGE_SIZE]


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[ServiceProcess]:
    with serving(model_repo, max_wait_ms="1") as process:
        yield process


@pytest.fixture(scope="module")
def http(server: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def pixels_input(values: object = None, **parameters: object) -> dict:
    tensor: dict = {"name": "pixels", "datatype": "FP32", "shape": PIXELS_SHAPE}
    tensor["data"] = [0.0] * int(np.prod(PIXELS_SHAPE)) if values is None else values
    return tensor | ({"parameters": parameters} if parameters else {})


def raw_json(body: dict, **replace: str) -> bytes:
    """`body` as JSON, with each `"@name"` placeholder string replaced by raw JSON text (1e400, NaN, 2**64...)."""
    text = json.dumps(body)
    for name, raw in replace.items():
        text = text.replace(json.dumps(f"@{name}"), raw)
    return text.encode()


# (query, status): every /classify parameter at its boundaries. 422 invalid_parameter is the route's
# error for a bad parameter; the valid boundaries (threshold 0 and -0, budget 1, ...) answer 200.
CLASSIFY_QUERIES = [
    ("threshold=0", 200),
    ("threshold=-0", 200),
    ("threshold=1", 200),
    ("threshold=-1", 422),
    ("threshold=1e400", 422),
    ("threshold=nan", 422),
    ("threshold=NaN", 422),
    ("threshold=Infinity", 422),
    ("threshold=-Infinity", 422),
    ("threshold=", 422),
    (f"threshold={HUGE_INT}", 422),
    (f"threshold={LONG}", 422),
    ("mode=", 422),
    ("mode=0", 422),
    (f"mode={LONG}", 422),
    ("mode=auto", 200),
    ("budget=0", 422),
    ("budget=-0", 422),
    ("budget=-1", 422),
    ("budget=1", 200),
    ("budget=1e-300", 200),  # the cheapest the model can do: its first exit
    ("budget=5e-324", 200),
    ("budget=1e400", 422),
    ("budget=nan", 422),
    ("budget=Infinity", 422),
    ("budget=", 422),
    ("top_k=0", 422),
    ("top_k=-1", 422),
    (f"top_k={NUM_CLASSES}", 200),
    (f"top_k={HUGE_INT}", 422),
    ("top_k=1.5", 422),
    ("top_k=", 422),
    ("top_k=1e400", 422),
    ("deadline_ms=0", 422),
    ("deadline_ms=-0", 422),
    ("deadline_ms=-1", 422),
    ("deadline_ms=1e400", 422),
    ("deadline_ms=nan", 422),
    ("deadline_ms=Infinity", 422),
    ("deadline_ms=", 422),
    (f"deadline_ms={LONG}", 422),
    (f"deadline_ms={HUGE_INT}", 200),  # at most the setting request_timeout_s
    ("model=", 422),
    ("version=", 422),
    ("version=-1", 422),
    ("version=1.0", 422),
]


@pytest.mark.parametrize(("query", "status"), CLASSIFY_QUERIES)
def test_classify_parameters_at_their_boundaries(http: httpx.Client, query: str, status: int) -> None:
    response = http.post(f"/classify?{query}", content=PNG, headers=IMAGE)
    assert response.status_code == status, response.text
    if status != 200:
        error = response.json()["error"]
        assert error["code"] == "invalid_parameter"
        assert error["message"].startswith(query.partition("=")[0] + ":")


@pytest.mark.parametrize(
    "query", [f"model={LONG}", "model=%00", f"version={HUGE_INT}", "version=0", f"version={'9' * 5000}"]
)
def test_classify_model_and_version_never_a_5xx(http: httpx.Client, query: str) -> None:
    """Names are confined by the model-control part of issue #30 (it picks 400 or 404); here: never a 5xx."""
    response = http.post(f"/classify?{query}", content=PNG, headers=IMAGE)
    assert response.status_code in (400, 404, 422), response.text
    assert "error" in response.json()


# (request parameters as raw JSON, status) for the OIP infer route; its errors are 400 {"error": "..."}.
# OIP timeout 0 keeps Triton's meaning: no timeout of the request's own (the service's request_timeout_s).
OIP_PARAMETERS = [
    ('{"threshold": 0}', 200),
    ('{"threshold": -0.0}', 200),
    ('{"threshold": -1}', 400),
    ('{"threshold": 1e400}', 400),
    ('{"threshold": NaN}', 400),
    ('{"threshold": Infinity}', 400),
    ('{"threshold": -Infinity}', 400),
    ('{"threshold": "0.5"}', 400),
    ('{"threshold": true}', 400),
    ('{"threshold": null}', 400),
    ('{"threshold": []}', 400),
    (f'{{"threshold": {HUGE_INT}}}', 400),
    ('{"threshold": 1e-400}', 200),  # underflows to 0: a valid threshold
    ('{"mode": ""}', 400),
    ('{"mode": 0}', 400),
    (f'{{"mode": "{LONG}"}}', 400),
    ('{"budget": 0}', 400),
    ('{"budget": -0.0}', 400),
    ('{"budget": 1}', 200),
    ('{"budget": 1e-300}', 200),
    ('{"threshold": 5e-324}', 200),
    ('{"budget": 1e400}', 400),
    ('{"budget": NaN}', 400),
    ('{"timeout": 0}', 200),
    ('{"timeout": -1}', 400),
    ('{"timeout": 1.5}', 400),
    ('{"timeout": 1e400}', 400),
    ('{"timeout": NaN}', 400),
    ('{"timeout": "10"}', 400),
    ('{"timeout": true}', 400),
    (f'{{"timeout": {HUGE_INT - 1}}}', 200),  # Triton's uint64 microseconds: capped by request_timeout_s
    (f'{{"timeout": {HUGE_INT}}}', 400),
    (f'{{"timeout": {10**400}}}', 400),
    ('{"binary_data_output": 1}', 400),
    ('{"binary_data_output": "true"}', 400),
    ('{"binary_data_output": false}', 200),
    ('{"unknown": 1}', 400),
    ('{"": 1}', 400),
    ("[]", 400),
    ('"x"', 400),
]


@pytest.mark.parametrize(("parameters", "status"), OIP_PARAMETERS)
def test_oip_parameters_at_their_boundaries(http: httpx.Client, parameters: str, status: int) -> None:
    body = raw_json({"parameters": "@p", "inputs": [pixels_input()]}, p=parameters)
    response = http.post(INFER, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    if status != 200:
        assert set(response.json()) == {"error"} and response.json()["error"]


def test_a_positive_oip_timeout_that_passes_keeps_its_504(http: httpx.Client) -> None:
    body = {"parameters": {"timeout": 1}, "inputs": [pixels_input()]}  # 1 microsecond
    response = http.post(INFER, json=body)
    assert response.status_code == 504, response.text
    assert response.json() == {"error": "the request did not finish within 1e-06 s"}


# (outputs or input pieces as raw JSON, status): the per-output and per-input parameters and the shapes.
OIP_TENSORS = [
    ('[{"name": "probabilities", "parameters": {"binary_data": 1}}]', 400),
    ('[{"name": "probabilities", "parameters": {"binary_data": "yes"}}]', 400),
    ('[{"name": "probabilities", "parameters": {"binary_data": true}}]', 200),
    ('[{"name": "probabilities", "parameters": {"classification": 0}}]', 200),
    ('[{"name": "probabilities", "parameters": {"classification": -1}}]', 400),
    ('[{"name": "probabilities", "parameters": {"classification": 1.5}}]', 400),
    ('[{"name": "probabilities", "parameters": {"classification": true}}]', 400),
    (f'[{{"name": "probabilities", "parameters": {{"classification": {HUGE_INT}}}}}]', 400),
    (f'[{{"name": "probabilities", "parameters": {{"classification": {10**400}}}}}]', 400),
    ('[{"name": "probabilities", "parameters": {"classification": 1e400}}]', 400),
    ('[{"name": "probabilities", "parameters": {"classification": NaN}}]', 400),
    (f'[{{"name": "probabilities", "parameters": {{"classification": {NUM_CLASSES}}}}}]', 200),
    ('[{"name": ""}]', 400),
    (f'[{{"name": "{LONG}"}}]', 400),
    ("[]", 200),
]


@pytest.mark.parametrize(("outputs", "status"), OIP_TENSORS)
def test_oip_output_parameters_at_their_boundaries(http: httpx.Client, outputs: str, status: int) -> None:
    body = raw_json({"inputs": [pixels_input()], "outputs": "@o"}, o=outputs)
    response = http.post(INFER, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text


@pytest.mark.parametrize(
    ("shape", "data", "status"),
    [
        (f"[{HUGE_INT}, 3, 8, 8]", None, 400),
        (f"[{10**400}, 3, 8, 8]", None, 400),
        ("[-1, 3, 8, 8]", None, 400),
        ("[0, 3, 8, 8]", None, 400),
        ('["1", 3, 8, 8]', None, 400),
        ("[1.0, 3, 8, 8]", None, 400),
        ("[true, 3, 8, 8]", None, 400),
        ("[1, 3, 8, 8, 1e400]", None, 400),
        ('"1"', None, 400),
        ("[1, 3, 8, 8]", "[1e400]", 400),
        ("[1, 3, 8, 8]", f"[{10**400}]", 400),
        ("[1, 3, 8, 8]", "[NaN]", 400),
        ("[1, 3, 8, 8]", '["1"]', 400),
        ("[1, 3, 8, 8]", "[true]", 400),
        ("[1, 3, 8, 8]", "[[[]]]", 400),
    ],
)
def test_oip_pixels_shapes_and_numbers(http: httpx.Client, shape: str, data: str | None, status: int) -> None:
    """JSON numbers of a tensor are parsed strictly: out of range (1e400, 10**400) or of the wrong type is a 400."""
    tensor = pixels_input() | {"shape": "@s"}
    if data is not None:
        tensor["data"] = "@d"
        replace = {"s": shape, "d": data.replace("]", ", 0.0" * (3 * IMAGE_SIZE * IMAGE_SIZE - 1) + "]", 1)}
    else:
        replace = {"s": shape}
    body = raw_json({"inputs": [tensor]}, **replace)
    response = http.post(INFER, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text


@pytest.mark.parametrize(
    ("size", "status"), [("-1", 400), (str(HUGE_INT), 400), ("1.5", 400), ('"4"', 400), ("true", 400), ("NaN", 400)]
)
def test_oip_binary_data_size_at_its_boundaries(http: httpx.Client, size: str, status: int) -> None:
    raw = struct.pack("<I", len(PNG)) + PNG
    header = raw_json(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": "@n"}}]},
        n=size,
    )
    response = http.post(INFER, content=header + raw, headers={HEADER_LENGTH: str(len(header))})
    assert response.status_code == status, response.text


@pytest.mark.parametrize("request_id", [LONG, ""])
def test_an_oip_id_of_any_length_is_echoed(http: httpx.Client, request_id: str) -> None:
    response = http.post(INFER, json={"id": request_id, "inputs": [pixels_input()]})
    assert response.status_code == 200 and response.json()["id"] == request_id


@pytest.mark.parametrize("request_id", ["5", "true", "[]", "1e400"])
def test_an_oip_id_that_is_no_string_is_a_400(http: httpx.Client, request_id: str) -> None:
    response = http.post(INFER, content=raw_json({"id": "@i", "inputs": [pixels_input()]}, i=request_id))
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("invalid inference request: id:")


# Inputs that drive the model to non-finite scores: the input's fault, a 400 naming it; never a 500.
# The tiny model's tanh saturates, so it stays finite on any finite pixels; this copy's exit heads have
# weights of +-3e38: zero images (its warm-up) stay finite, any other image overflows its scores, as
# pixels of 3e38 overflow a ViT's LayerNorm.

HUGE_PIXELS = [3e38] * int(np.prod(PIXELS_SHAPE))


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory: pytest.TempPathFactory, weights: TinyWeights) -> Iterator[httpx.Client]:
    heads = [(np.sign(weight).astype(np.float32) * np.float32(3e38), bias) for weight, bias in weights.heads]
    repo = tmp_path_factory.mktemp("overflowing")
    write_model_version(repo, TinyWeights(weights.stem, weights.blocks, heads))
    with serving(repo, max_wait_ms="1") as process, httpx.Client(base_url=process.url, timeout=30) as client:
        yield client


def requests_counted(client: httpx.Client, code: str) -> float:
    return value(samples(client), "dynadapter_requests_total", model="tiny", version="1", code=code)


def test_huge_finite_pixels_in_json_are_a_400_naming_the_input(overflowing: httpx.Client) -> None:
    before = requests_counted(overflowing, "400")
    body = {"inputs": [pixels_input([0.0] * len(HUGE_PIXELS) + HUGE_PIXELS) | {"shape": [2, *PIXELS_SHAPE[1:]]}]}
    response = overflowing.post(INFER, json=body)
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "input 'pixels' (image 1) drives the model to non-finite scores"}
    assert requests_counted(overflowing, "400") - before == 1
    assert requests_counted(overflowing, "500") == 0
    zeros = overflowing.post(INFER, json={"inputs": [pixels_input()]})
    assert zeros.status_code == 200 and np.isfinite(zeros.json()["outputs"][0]["data"]).all()


def test_huge_finite_pixels_in_binary_are_a_400_naming_the_input(overflowing: httpx.Client) -> None:
    raw = np.asarray(HUGE_PIXELS, dtype="<f4").tobytes()
    tensor = {"name": "pixels", "datatype": "FP32", "shape": PIXELS_SHAPE, "parameters": {"binary_data_size": len(raw)}}
    header = json.dumps({"inputs": [tensor]}).encode()
    response = overflowing.post(INFER, content=header + raw, headers={HEADER_LENGTH: str(len(header))})
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "input 'pixels' (image 0) drives the model to non-finite scores"}


def test_an_image_that_drives_the_model_to_non_finite_scores_is_a_400_on_every_route(
    overflowing: httpx.Client,
) -> None:
    before = requests_counted(overflowing, "400")
    response = overflowing.post("/classify", content=PNG, headers=IMAGE)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == {
        "code": "non_finite_output",
        "message": "input 'image' (image 0) drives the model to non-finite scores",
    }
    files = [("file", ("a.png", PNG, "image/png")), ("file", ("b.png", PNG, "image/png"))]
    response = overflowing.post("/classify", files=files)
    assert response.status_code == 400 and response.json()["error"]["code"] == "non_finite_output"
    image = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(PNG).decode()]}
    response = overflowing.post(INFER, json={"inputs": [image]})
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "input 'image' (image 0) drives the model to non-finite scores"}
    assert requests_counted(overflowing, "400") - before == 3
    assert requests_counted(overflowing, "500") == 0


# What Triton refuses.


def test_a_duplicated_requested_output_is_a_400(http: httpx.Client) -> None:
    outputs = [{"name": "probabilities"}, {"name": "exit_index"}, {"name": "probabilities"}]
    response = http.post(INFER, json={"inputs": [pixels_input()], "outputs": outputs})
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "output 'probabilities' is requested more than once"}


def test_data_together_with_binary_data_size_is_a_400(http: httpx.Client) -> None:
    raw = np.zeros(PIXELS_SHAPE, dtype="<f4").tobytes()
    tensor = pixels_input(binary_data_size=len(raw))
    header = json.dumps({"inputs": [tensor]}).encode()
    response = http.post(INFER, content=header + raw, headers={HEADER_LENGTH: str(len(header))})
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": "input 'pixels' must set only one of 'data' and 'parameters.binary_data_size', not both"
    }


@pytest.mark.parametrize(
    ("parameters", "status", "error"),
    [
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": 768},
            400,
            "input 'pixels': shared memory is not supported here; send data or binary data",
        ),
        ({"some_client_tag": "x"}, 200, None),  # as Triton: an input parameter it does not know is ignored
    ],
)
def test_input_parameters_as_triton_reads_them(
    http: httpx.Client, parameters: dict, status: int, error: str | None
) -> None:
    response = http.post(INFER, json={"inputs": [pixels_input(**parameters)]})
    assert response.status_code == status, response.text
    if error is not None:
        assert response.json() == {"error": error}
