from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.support.service import IMAGE
from tests.support.tiny_onnx_model import png_bytes


@pytest.fixture
def secured(start_client: Callable[..., TestClient]) -> TestClient:
    return start_client(api_keys=["alpha", "beta"])


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Bearer alph", "Basic YWxwaGE6", "alpha", "Bearer "])
def test_missing_or_wrong_key_is_401(secured: TestClient, authorization: str | None) -> None:
    headers = dict(IMAGE) | ({"authorization": authorization} if authorization else {})
    for response in (
        secured.post("/classify", content=png_bytes(0), headers=headers),
        secured.get("/v1/models", headers=headers),
    ):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("key", ["alpha", "beta"])
def test_any_configured_key_is_accepted(secured: TestClient, key: str) -> None:
    headers = IMAGE | {"authorization": f"Bearer {key}"}
    assert secured.post("/classify", content=png_bytes(0), headers=headers).status_code == 200
    assert secured.get("/v1/models", headers=headers).status_code == 200


def test_probes_and_metrics_stay_open(secured: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert secured.get(path).status_code == 200, path


def test_keys_come_from_a_comma_separated_environment_variable(
    monkeypatch: pytest.MonkeyPatch, make_settings: Callable
) -> None:
    monkeypatch.setenv("DYNADAPTER_API_KEYS", " alpha, beta ,,")
    assert make_settings().api_keys == ["alpha", "beta"]
    monkeypatch.delenv("DYNADAPTER_API_KEYS")
    assert make_settings().api_keys == []


def test_without_keys_no_authorization_is_needed(client: TestClient) -> None:
    assert client.post("/classify", content=png_bytes(0), headers=IMAGE).status_code == 200
