"""Fixtures for the service tests: apps on the tiny model repository of tests/conftest.py."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dynadapter.contract.model_repository import Manifest, load_model
from dynadapter.service.main import create_app
from dynadapter.service.settings import Settings
from tests.support.service import wait_ready
from tests.support.tiny_onnx_model import OPENVINO

#: Every backend present here: the service's tests run against each (README "Serving on a CPU").
BACKENDS = ["onnxruntime", *(["openvino"] if OPENVINO else [])]


@pytest.fixture(scope="session")
def manifest(model_repo: Path) -> Manifest:
    """The tiny model's manifest, as the service reads it."""
    return load_model(model_repo).manifest


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_settings(model_repo: Path, backend: str) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "model_repo": model_repo,
            "backend": backend,
            "providers": "cpu",
            "intra_op_threads": 1,
            "max_wait_ms": 2.0,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
def start_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    """Start an app (lifespan included) with settings overrides and wait until it is ready."""
    clients: list[TestClient] = []

    def start(**overrides: object) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides)))
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(start_client: Callable[..., TestClient]) -> TestClient:
    return start_client()
