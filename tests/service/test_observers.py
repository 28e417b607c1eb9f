"""Stage observers (metrics, live calibration) cannot fail a request (dynadapter.service.observers)."""

import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from dynadapter.service.metrics import ServiceMetrics
from tests.support.service import IMAGE
from tests.support.tiny_onnx_model import png_bytes


def test_a_raising_observer_is_logged_once_and_the_answers_still_go_out(
    start_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client = start_client()
    photos = [png_bytes(seed, (16, 16)) for seed in range(3)]
    expected = [client.post("/classify", content=photo, headers=IMAGE).json()["label"] for photo in photos]

    def broken(*args: object) -> None:
        raise RuntimeError("metrics are down")

    monkeypatch.setattr(ServiceMetrics, "record_stage", broken)
    with caplog.at_level(logging.INFO, logger="dynadapter.service.observers"):
        responses = [client.post("/classify", content=photo, headers=IMAGE) for photo in photos * 2]
    assert [response.status_code for response in responses] == [200] * 6
    assert [response.json()["label"] for response in responses] == expected * 2
    failures = [record for record in caplog.records if record.name == "dynadapter.service.observers"]
    assert [record.levelno for record in failures] == [logging.ERROR]
    assert "stage observer Engine._count_stage failed (RuntimeError)" in failures[0].getMessage()
    assert "metrics are down" in caplog.text
