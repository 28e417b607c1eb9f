"""OIP v2 over gRPC against a real server (`python -m dynadapter.service` with a gRPC port): health,
metadata and repository RPCs, answers equal to /classify's and to REST OIP's (raw and typed contents,
images and pixels), tritonclient.grpc and KServe's InferenceGRPCClient, API keys and metrics."""

import base64
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from dynadapter.bench.lab.process import free_port
from dynadapter.contract.model_repository import load_model
from dynadapter.service.grpc.protocol import message
from tests.support.grpc_clients import RawClient, infer_request, sdk_infer, set_parameter
from tests.support.service import ROOT, ServiceProcess, samples, serving, value
from tests.support.tiny_onnx_model import NUM_CLASSES, png_bytes

IMAGES = [png_bytes(seed) for seed in range(5)]
OUTPUTS = ("probabilities", "exit_index", "gflops", "exit_reason")


class GrpcServer:
    """A served repository: its REST URL and its gRPC address."""

    def __init__(self, process: ServiceProcess, port: int) -> None:
        self.url = process.url
        self.address = f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[GrpcServer]:
    port = free_port()
    with serving(model_repo, grpc_port=str(port), max_images_per_request="6", max_wait_ms="2") as process:
        yield GrpcServer(process, port)


@pytest.fixture
def client(server: GrpcServer) -> Iterator[RawClient]:
    client = RawClient(server.address)
    yield client
    client.close()


def answers(response: Any) -> dict[str, np.ndarray]:
    """The response's outputs by name, read from raw_output_contents as their datatypes say."""
    out = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.datatype == "BYTES":
            items, offset = [], 0
            while offset < len(raw):
                size = int.from_bytes(raw[offset : offset + 4], "little")
                items.append(raw[offset + 4 : offset + 4 + size].decode())
                offset += 4 + size
            values = np.array(items, dtype=object)
        else:
            values = np.frombuffer(raw, dtype={"FP32": "<f4", "INT32": "<i4"}[tensor.datatype])
        out[tensor.name] = values.reshape(list(tensor.shape))
    return out


def rest_oip(server: GrpcServer, images: list[bytes], **parameters: object) -> dict[str, list]:
    """REST OIP's JSON answer to the same images, by output name."""
    data = [base64.b64encode(b).decode() for b in images]
    body = {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES", "data": data}]}
    response = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body | {"parameters": parameters})
    assert response.status_code == 200, response.text
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


def classify(server: GrpcServer, images: list[bytes], **query: str) -> list[dict]:
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    response = httpx.post(f"{server.url}/classify", params={"top_k": NUM_CLASSES, **query}, files=files)
    assert response.status_code == 200, response.text
    return response.json()


def assert_equal_to_rest(server: GrpcServer, got: dict[str, Any], images: list[bytes], **knob: Any) -> None:
    """`got` (outputs by name) equals REST OIP's answer and /classify's, output for output."""
    rest = rest_oip(server, images, **knob)
    expected = classify(server, images, **{k: str(v) for k, v in knob.items()})
    assert np.asarray(got["exit_index"]).tolist() == rest["exit_index"] == [a["exit"]["index"] for a in expected]
    assert list(got["exit_reason"]) == rest["exit_reason"] == [a["exit_reason"] for a in expected]
    np.testing.assert_allclose(np.ravel(got["gflops"]), rest["gflops"], rtol=1e-6)
    np.testing.assert_allclose(np.ravel(got["gflops"]), [a["gflops"]["used"] for a in expected], rtol=1e-6)
    probabilities = np.asarray(got["probabilities"], dtype=np.float64).reshape(len(images), NUM_CLASSES)
    np.testing.assert_allclose(probabilities.ravel(), rest["probabilities"], rtol=1e-6)
    for row, answer in zip(probabilities, expected, strict=True):
        np.testing.assert_allclose(
            [row[s["class_id"]] for s in answer["top_k"]], [s["confidence"] for s in answer["top_k"]], rtol=1e-5
        )


def test_health_and_server_metadata(server: GrpcServer, client: RawClient) -> None:
    assert client.call("ServerLive").live is True
    assert client.call("ServerReady").ready is True
    metadata = client.call("ServerMetadata")
    assert (metadata.name, list(metadata.extensions)) == (
        "dyn-adapter",
        httpx.get(f"{server.url}/v2").json()["extensions"],
    )
    assert metadata.version == httpx.get(f"{server.url}/v2").json()["version"]


def test_model_ready_and_metadata_equal_rest(server: GrpcServer, client: RawClient) -> None:
    assert client.call("ModelReady", name="tiny").ready is True
    assert client.call("ModelReady", name="tiny", version="1").ready is True
    assert client.call("ModelReady", name="nope").ready is False
    assert client.call("ModelReady", name="tiny", version="9").ready is False
    for version in ("", "1"):
        got = client.call("ModelMetadata", name="tiny", version=version)
        rest = httpx.get(f"{server.url}/v2/models/tiny" + (f"/versions/{version}" if version else "")).json()
        assert (got.name, list(got.versions), got.platform) == (rest["name"], rest["versions"], rest["platform"])
        for ours, theirs in ((got.inputs, rest["inputs"]), (got.outputs, rest["outputs"])):
            assert [(t.name, t.datatype, list(t.shape)) for t in ours] == [
                (t["name"], t["datatype"], t["shape"]) for t in theirs
            ]


def test_repository_index_equals_rest(server: GrpcServer, client: RawClient) -> None:
    rest = httpx.post(f"{server.url}/v2/repository/index").json()
    index = client.call("RepositoryIndex").models
    assert [{k: v for k, v in (("name", m.name), ("version", m.version), ("state", m.state)) if v} for m in index] == [
        {k: e[k] for k in ("name", "version", "state") if k in e} for e in rest
    ]
    assert [m.state for m in client.call("RepositoryIndex", ready=True).models] == ["READY"]


@pytest.mark.parametrize("raw", [True, False], ids=["raw_input_contents", "bytes_contents"])
@pytest.mark.parametrize("knob", [{"mode": "fast"}, {"mode": "accurate"}, {"threshold": 0.5}, {}], ids=str)
def test_model_infer_answers_equal_rest_oip_and_classify(
    server: GrpcServer, client: RawClient, raw: bool, knob: dict[str, Any]
) -> None:
    request = infer_request("tiny", IMAGES, raw=raw, **knob)
    request.id = "r1"
    response = client.call("ModelInfer", request)
    assert (response.model_name, response.model_version, response.id) == ("tiny", "1", "r1")
    got = answers(response)
    assert [t.name for t in response.outputs] == list(OUTPUTS)
    assert (got["probabilities"].dtype, got["exit_index"].dtype, got["gflops"].dtype) == (
        np.float32,
        np.int32,
        np.float32,
    )
    assert_equal_to_rest(server, got, IMAGES, **knob)


@pytest.mark.parametrize("raw", [True, False], ids=["raw_input_contents", "fp32_contents"])
def test_pixels_give_the_answers_of_their_images(client: RawClient, model_repo: Path, raw: bool) -> None:
    preprocessing = load_model(model_repo, "tiny").manifest.preprocessing
    pixels = np.stack([preprocessing.load(data, 10**6) for data in IMAGES]).astype(np.float32)
    request = message("ModelInferRequest")(model_name="tiny")
    tensor = request.inputs.add(name="pixels", datatype="FP32", shape=list(pixels.shape))
    if raw:
        request.raw_input_contents.append(pixels.astype("<f4").tobytes())
    else:
        tensor.contents.fp32_contents.extend(pixels.ravel().tolist())
    got = answers(client.call("ModelInfer", request))
    expected = answers(client.call("ModelInfer", infer_request("tiny", IMAGES)))
    assert got["exit_index"].tolist() == expected["exit_index"].tolist()
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], rtol=1e-6)


def test_requested_outputs_and_the_classification_extension(server: GrpcServer, client: RawClient) -> None:
    request = infer_request("tiny", IMAGES[:3], threshold=0.5)
    request.outputs.add(name="exit_index")
    set_parameter(request.outputs.add(name="probabilities").parameters["classification"], 2)
    response = client.call("ModelInfer", request)
    got = answers(response)
    assert [t.name for t in response.outputs] == ["exit_index", "probabilities"]
    assert got["probabilities"].shape == (3, 2)
    for row, answer in zip(got["probabilities"], classify(server, IMAGES[:3], threshold="0.5"), strict=True):
        assert [tuple(text.split(":")[1:]) for text in row] == [
            (str(s["class_id"]), s["label"]) for s in answer["top_k"][:2]
        ]


@pytest.mark.parametrize(
    ("sdk", "knob"),
    [
        ("triton", {"mode": "fast"}),
        ("triton", {"threshold": 0.5}),
        ("kserve", {"mode": "fast"}),
        ("kserve", {"threshold": "0.5"}),
    ],
)
def test_sdk_clients_get_the_answers_of_classify(server: GrpcServer, sdk: str, knob: dict[str, Any]) -> None:
    images = [base64.b64encode(b).decode() for b in IMAGES]
    answer = sdk_infer(sdk, server.address, {"model": "tiny", "images": images, "parameters": knob})
    assert answer["model_version"] == "1", answer
    if sdk == "triton":  # is_server_live, is_server_ready, is_model_ready
        assert answer["health"] == [True, True, True]
    assert_equal_to_rest(
        server, answer["outputs"], IMAGES, **{k: float(v) if k == "threshold" else v for k, v in knob.items()}
    )


@pytest.mark.parametrize("sdk", ["triton", "kserve"])
def test_sdk_clients_see_the_protocol_errors(server: GrpcServer, sdk: str) -> None:
    images = [base64.b64encode(IMAGES[0]).decode()]
    missing = sdk_infer(sdk, server.address, {"model": "nope", "images": images})
    assert missing["error"]["code"] in ("NOT_FOUND", "StatusCode.NOT_FOUND"), missing
    assert missing["error"]["message"].endswith("model 'nope' is not served; served: tiny")
    # KServe's client has no double parameters: a fraction travels as a decimal string.
    threshold = 2.0 if sdk == "triton" else "2.0"
    bad = sdk_infer(sdk, server.address, {"model": "tiny", "images": images, "parameters": {"threshold": threshold}})
    assert bad["error"]["code"] in ("INVALID_ARGUMENT", "StatusCode.INVALID_ARGUMENT"), bad
    assert bad["error"]["message"].startswith("parameters: threshold"), bad


def test_model_infer_is_counted_like_rest(server: GrpcServer, client: RawClient) -> None:
    before = samples(httpx.Client(base_url=server.url))
    client.call("ModelInfer", infer_request("tiny", IMAGES[:2]))
    client.call("ModelInfer", infer_request("tiny", IMAGES[:1]))
    with pytest.raises(grpc.RpcError):
        client.call("ModelInfer", infer_request("nope", IMAGES[:1]))
    after = samples(httpx.Client(base_url=server.url))

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("dynadapter_requests_total", model="tiny", version="1", code="200") == 2
    assert delta("dynadapter_requests_total", model="unknown", version="", code="404") == 1
    assert delta("dynadapter_request_duration_seconds_count", model="tiny", version="1") == 2
    assert (
        delta("dynadapter_exits_total", model="tiny", version="1", exit="0")
        + delta("dynadapter_exits_total", model="tiny", version="1", exit="1")
        + delta("dynadapter_exits_total", model="tiny", version="1", exit="2")
        == 3
    )
    assert delta("dynadapter_grpc_requests_total", method="ModelInfer", code="OK") == 2
    assert delta("dynadapter_grpc_requests_total", method="ModelInfer", code="NOT_FOUND") == 1
    assert value(after, "dynadapter_inflight_requests", model="tiny", version="1") == 0


def test_the_documented_tritonclient_grpc_example_runs(server: GrpcServer, tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "protocol-oip.md").read_text()
    (block,) = re.findall(r"\(`tests/service/test_grpc.py` runs it\):\n\n((?:    .*\n|\n)+)", doc)
    photos = []
    for i, data in enumerate(IMAGES[:2]):
        photos.append(str(tmp_path / f"{i}.png"))
        Path(photos[-1]).write_bytes(data)
    code = textwrap.dedent(block).replace("localhost:8001", server.address)
    # A child process: tritonclient.grpc's messages cannot share one with kserve's (tests/support/grpc_clients.py).
    prelude = f"MODEL = 'tiny'\nPHOTOS = {json.dumps(photos)}\n"
    done = subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    expected = classify(server, IMAGES[:2], mode="fast")
    assert done.stdout.split("]")[0] == "[" + " ".join(str(a["exit"]["index"]) for a in expected)
