"""Open Inference Protocol v2 against a real server on a loopback port, with the real clients users have:
tritonclient[http] (binary and JSON tensors) and KServe's REST client; answers must equal /classify's."""

import asyncio
import base64
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from dynadapter.contract.model_repository import load_model
from tests.support.service import ServiceProcess, samples, serving, value
from tests.support.tiny_onnx_model import IMAGE_SIZE, NUM_CLASSES, png_bytes

IMAGES = [png_bytes(seed) for seed in range(5)]


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[ServiceProcess]:
    with serving(model_repo, max_images_per_request="6", max_wait_ms="2") as process:
        yield process


@pytest.fixture
def client(server: ServiceProcess) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def classify(server: ServiceProcess, images: list[bytes], **query: str) -> list[dict]:
    """The /classify answers for `images` (several file parts), with every class in top_k."""
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    response = httpx.post(f"{server.url}/classify", params={"top_k": NUM_CLASSES, **query}, files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    return body if isinstance(body, list) else [body]


def probabilities_of(answer: dict) -> np.ndarray:
    out = np.zeros(NUM_CLASSES)
    for score in answer["top_k"]:
        out[score["class_id"]] = score["confidence"]
    return out


def image_input(images: list[bytes], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(images, dtype=object), binary_data=True)
    else:  # JSON has no bytes: OIP clients send encoded images as base64 strings
        tensor.set_data_from_numpy(np.array([base64.b64encode(b) for b in images], dtype=object), binary_data=False)
    return tensor


def test_health_metadata_and_config_through_tritonclient(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("nope")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata("tiny")
    assert metadata["versions"] == ["1"]
    assert {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]} == {
        "image": ("BYTES", [-1]),
        "pixels": ("FP32", [-1, 3, IMAGE_SIZE, IMAGE_SIZE]),
    }
    assert {t["name"]: (t["datatype"], t["shape"]) for t in metadata["outputs"]} == {
        "probabilities": ("FP32", [-1, NUM_CLASSES]),
        "exit_index": ("INT32", [-1]),
        "gflops": ("FP32", [-1]),
        "exit_reason": ("BYTES", [-1]),
    }
    config = client.get_model_config("tiny")
    assert config["max_batch_size"] == 0 and config["version_policy"] == {"latest": {"num_versions": 1}}
    assert [t["data_type"] for t in config["input"]] == ["TYPE_STRING", "TYPE_FP32"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("mode", ["fast", "accurate"])
def test_tritonclient_answers_equal_classify(
    server: ServiceProcess, client: triton.InferenceServerClient, binary: bool, mode: str
) -> None:
    outputs = [
        triton.InferRequestedOutput(name, binary_data=binary) for name in ("probabilities", "exit_index", "gflops")
    ]
    result = client.infer(
        "tiny", [image_input(IMAGES, binary)], outputs=outputs, parameters={"mode": mode}, request_id="r1"
    )
    expected = classify(server, IMAGES, mode=mode)
    assert result.get_response()["id"] == "r1" and result.get_response()["model_version"] == "1"
    assert result.as_numpy("exit_index").tolist() == [a["exit"]["index"] for a in expected]
    np.testing.assert_allclose(result.as_numpy("gflops"), [a["gflops"]["used"] for a in expected], rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("probabilities"), [probabilities_of(a) for a in expected], rtol=1e-5)


def test_classification_extension_gives_top_k_strings(
    server: ServiceProcess, client: triton.InferenceServerClient
) -> None:
    result = client.infer(
        "tiny",
        [image_input(IMAGES[:3], True)],
        outputs=[triton.InferRequestedOutput("probabilities", class_count=2)],
        parameters={"threshold": 0.5},
    )
    strings = result.as_numpy("probabilities")
    assert strings.shape == (3, 2)
    for row, answer in zip(strings, classify(server, IMAGES[:3], threshold="0.5"), strict=True):
        for text, score in zip(row, answer["top_k"][:2], strict=True):
            value_text, index, label = text.decode().split(":")
            assert (int(index), label) == (score["class_id"], score["label"])
            assert float(value_text) == pytest.approx(score["confidence"], abs=1e-6)


def test_every_output_in_binary_when_none_is_named(client: triton.InferenceServerClient) -> None:
    # tritonclient asks binary_data_output when no output is named; the reply carries the binary extension.
    result = client.infer("tiny", [image_input(IMAGES[:2], True)])
    assert result.as_numpy("probabilities").shape == (2, NUM_CLASSES)
    assert result.as_numpy("exit_index").dtype == np.int32
    assert all("binary_data_size" in output["parameters"] for output in result.get_response()["outputs"])


def test_preprocessed_pixels_give_the_same_answers(
    server: ServiceProcess, client: triton.InferenceServerClient, model_repo: Path
) -> None:
    preprocessing = load_model(model_repo, "tiny").manifest.preprocessing
    pixels = np.stack([preprocessing.load(data, 10**6) for data in IMAGES]).astype(np.float32)
    tensor = triton.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    result = client.infer("tiny", [tensor], outputs=[triton.InferRequestedOutput("exit_index", binary_data=False)])
    assert result.as_numpy("exit_index").tolist() == [a["exit"]["index"] for a in classify(server, IMAGES)]


def test_kserve_rest_client_answers_equal_classify(server: ServiceProcess) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def infer() -> tuple[list[int], bool]:
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            ready = await client.is_server_ready(server.url)
            tensor = InferInput("image", [len(IMAGES)], "BYTES")
            tensor.set_data_from_numpy(np.array(IMAGES, dtype=object), binary_data=True)
            request = InferRequest("tiny", infer_inputs=[tensor], parameters={"mode": "fast"})
            response = await client.infer(server.url, request, model_name="tiny")
            exits = next(o for o in response.outputs if o.name == "exit_index").as_numpy().tolist()
        finally:
            await client.close()
        return exits, ready

    exits, ready = asyncio.run(infer())
    assert ready
    assert exits == [a["exit"]["index"] for a in classify(server, IMAGES, mode="fast")]


def post_infer(server: ServiceProcess, body: object, model: str = "tiny", **kwargs: object) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=json.dumps(body), **kwargs)  # type: ignore[arg-type]


def one_image(**parameters: object) -> dict:
    data = [base64.b64encode(IMAGES[0]).decode()]
    return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": data}], "parameters": parameters}


@pytest.mark.parametrize(
    ("body", "model", "status", "fragment"),
    [
        (one_image(), "nope", 404, "model 'nope'"),
        ({"inputs": []}, "tiny", 400, "inputs"),
        ({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["AAAA"]}]}, "tiny", 400, "shape"),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["***"]}]}, "tiny", 400, "base64"),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, "tiny", 400, "BYTES"),
        (
            {"inputs": [{"name": "pixels", "shape": [1, 3, 4, 4], "datatype": "FP32", "data": [0.0] * 48}]},
            "tiny",
            400,
            "[N, 3, 8, 8]",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}]},
            "tiny",
            400,
            "unknown input",
        ),
        (one_image(threshold=2), "tiny", 400, "threshold"),
        (one_image(mode="fast", budget=0.5), "tiny", 400, "at most one"),
        (one_image(timeout=-1), "tiny", 400, "timeout"),
        (one_image(timeout=True), "tiny", 400, "timeout"),  # JSON true is no number of microseconds
        (one_image(threshold=True), "tiny", 400, "threshold"),
        (one_image(binary_data_output="yes"), "tiny", 400, "binary_data_output"),
        (one_image(tiemout=5), "tiny", 400, "tiemout"),
        (one_image() | {"outputs": [{"name": "logits"}]}, "tiny", 400, "unknown output"),
        (
            one_image() | {"outputs": [{"name": "gflops", "parameters": {"classification": 2}}]},
            "tiny",
            400,
            "classification",
        ),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}]}, "tiny", 400, "image"),
    ],
)
def test_bad_requests_get_the_protocol_error_with_the_right_4xx(
    server: ServiceProcess, body: dict, model: str, status: int, fragment: str
) -> None:
    response = post_infer(server, body, model)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and fragment in error


def test_too_many_images_is_413_and_the_timeout_parameter_is_honoured(server: ServiceProcess) -> None:
    data = [base64.b64encode(IMAGES[0]).decode()] * 7
    body = {"inputs": [{"name": "image", "shape": [7], "datatype": "BYTES", "data": data}]}
    response = post_infer(server, body)
    assert response.status_code == 413 and "more than 6 images" in response.json()["error"]
    assert post_infer(server, one_image(timeout=5_000_000)).status_code == 200


def test_binary_request_with_a_bad_header_length_is_400(server: ServiceProcess) -> None:
    header = json.dumps(
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}]}
    ).encode()
    element = struct.pack("<I", 100) + b"abcd"  # claims 100 bytes, has 4
    for length, fragment in [("x", "Inference-Header-Content-Length"), (str(len(header)), "shorter than its length")]:
        response = httpx.post(
            f"{server.url}/v2/models/tiny/infer",
            content=header + element,
            headers={"Inference-Header-Content-Length": length},
        )
        assert response.status_code == 400 and fragment in response.json()["error"]


def test_oip_requests_are_counted_like_classify(server: ServiceProcess) -> None:
    before = samples(httpx.Client(base_url=server.url))
    data = [base64.b64encode(b).decode() for b in IMAGES[:3]]
    body = {"inputs": [{"name": "image", "shape": [3], "datatype": "BYTES", "data": data}]}
    assert post_infer(server, body).status_code == 200
    assert post_infer(server, one_image(), model="nope").status_code == 404
    after = samples(httpx.Client(base_url=server.url))

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("dynadapter_requests_total", model="tiny", version="1", code="200") == 1
    assert delta("dynadapter_requests_total", model="unknown", version="", code="404") == 1
    assert sum(delta("dynadapter_exits_total", model="tiny", version="1", exit=str(k)) for k in range(3)) == 3
    assert delta("dynadapter_batch_size_sum", model="tiny", version="1") == 3


def test_health_routes_answer_small_json(server: ServiceProcess) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{server.url}/v2/models/tiny/versions/7/ready").status_code == 404
    with pytest.raises(InferenceServerException, match="not served"):
        triton.InferenceServerClient(server.url.removeprefix("http://")).get_model_metadata("tiny", "7")
