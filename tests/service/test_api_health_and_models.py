from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from dynadapter.service.main import create_app
from tests.support.service import wait_ready
from tests.support.tiny_onnx_model import HEAD_GFLOPS, NUM_EXITS


def test_healthz_always_200_and_readyz_503_until_loaded(make_settings: Callable) -> None:
    app = create_app(make_settings())
    unstarted = TestClient(app)  # lifespan not run: nothing loaded
    assert unstarted.get("/healthz").json() == {"status": "ok"}
    response = unstarted.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "not_ready"
    with TestClient(app) as started:
        wait_ready(started)
        assert started.get("/readyz").json() == {"status": "ready"}
    assert unstarted.get("/readyz").status_code == 503  # after shutdown


def test_models_lists_exits_costs_modes_and_providers(client: TestClient, backend: str) -> None:
    (model,) = client.get("/v1/models").json()["models"]
    assert (model["name"], model["version"], model["num_classes"]) == ("tiny", "1", 5)
    assert model["labels"] == ["cat", "dog", "fox", "owl", "yak"]
    assert [exit_["after_block"] for exit_ in model["exits"]] == [2, 4, 6]
    assert [exit_["head_gflops"] for exit_ in model["exits"]] == pytest.approx([HEAD_GFLOPS] * NUM_EXITS)
    cumulative = [exit_["cumulative_gflops"] for exit_ in model["exits"]]
    assert cumulative == sorted(cumulative) and cumulative[-1] == model["gflops_full"]
    assert model["modes"]["balanced"] == {
        "threshold": 0.6, "thresholds": None, "accuracy": 0.7, "flops_fraction": 0.7, "live_thresholds": None
    }  # fmt: skip
    assert model["modes"]["accurate"]["thresholds"] == [0.95, 0.9]
    precision = {"onnxruntime": "fp32-onnx", "openvino": "fp32-openvino"}[backend]
    assert model["serving"] == {"backend": backend, "precision": precision, "device": "cpu"}
    assert model["providers"] == (["CPUExecutionProvider"] if backend == "onnxruntime" else ["openvino:CPU"])


def test_metrics_say_which_backend_and_precision_serve(client: TestClient, backend: str) -> None:
    precision = {"onnxruntime": "fp32-onnx", "openvino": "fp32-openvino"}[backend]
    labels = f'backend="{backend}",device="cpu",model="tiny",precision="{precision}",version="1"'
    line = f"dynadapter_serving_info{{{labels}}} 1.0"
    assert line in client.get("/metrics").text.splitlines()


def test_openapi_documents_both_body_forms(client: TestClient) -> None:
    body = client.get("/openapi.json").json()["paths"]["/classify"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "image/*"}
