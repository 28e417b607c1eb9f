import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dynadapter.contract import softmax
from dynadapter.contract.images import decode_image, preprocess
from dynadapter.contract.model_repository import Manifest
from tests.support.tiny_onnx_model import LABELS, NUM_EXITS, TinyWeights, png_bytes, reference_exits


def reference(weights: TinyWeights, manifest: Manifest, data: bytes, thresholds: list[float]):
    spec = manifest.preprocessing
    x = preprocess(decode_image(data, 10**6), spec.size, spec.mean, spec.std, spec.interpolation)
    return reference_exits(weights, x[None], np.array([thresholds]))[0]


def post_raw(client: TestClient, data: bytes, query: str = "", content_type: str = "image/png"):
    return client.post(f"/classify{query}", content=data, headers={"content-type": content_type})


def test_answer_matches_the_reference_model(client: TestClient, weights: TinyWeights, manifest: Manifest) -> None:
    seen_exits = set()
    for seed in range(24):
        data = png_bytes(seed, (20, 14))
        body = post_raw(client, data).json()
        exit_index, logits = reference(weights, manifest, data, [0.6, 0.6])  # balanced
        probabilities = softmax(logits)
        assert body["exit"] == {"index": exit_index, "count": NUM_EXITS, "after_block": [2, 4, 6][exit_index]}
        assert body["class_id"] == int(np.argmax(logits))
        assert body["label"] == LABELS[body["class_id"]]
        assert body["confidence"] == pytest.approx(probabilities.max(), abs=1e-5)
        seen_exits.add(exit_index)
    assert len(seen_exits) > 1


def test_threshold_one_pays_for_no_early_head(client: TestClient, manifest: Manifest) -> None:
    body = post_raw(client, png_bytes(2), "?threshold=1").json()
    early_heads = sum(segment.head_gflops for segment in manifest.segments[:-1])
    assert early_heads > 0 and body["exit"]["index"] == NUM_EXITS - 1
    assert body["gflops"]["used"] == pytest.approx(manifest.gflops_full - early_heads)
    assert body["gflops"]["saved"] == pytest.approx(early_heads)


def test_response_has_every_field_of_the_contract(client: TestClient, manifest: Manifest) -> None:
    response = post_raw(client, png_bytes(1), "?top_k=3")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "model", "version", "label", "class_id", "confidence", "top_k", "exit", "gflops", "threshold",
        "exit_reason", "latency_ms",
    }  # fmt: skip
    assert (body["model"], body["version"], body["threshold"]) == ("tiny", "1", 0.6)
    last = body["exit"]["index"] == NUM_EXITS - 1
    assert body["exit_reason"] == ("last" if last else "confident")
    assert [entry["class_id"] for entry in body["top_k"]][0] == body["class_id"]
    confidences = [entry["confidence"] for entry in body["top_k"]]
    assert len(confidences) == 3 and confidences == sorted(confidences, reverse=True)
    segment = manifest.segments[body["exit"]["index"]]
    assert body["gflops"]["used"] == pytest.approx(segment.cumulative_gflops)
    assert body["gflops"]["full"] == pytest.approx(manifest.gflops_full)
    assert body["gflops"]["saved"] == pytest.approx(manifest.gflops_full - segment.cumulative_gflops)
    assert body["latency_ms"] > 0


def test_multipart_and_raw_body_give_the_same_answer(client: TestClient) -> None:
    data = png_bytes(3)
    raw = post_raw(client, data).json()
    multipart = client.post("/classify", files={"file": ("x.png", data, "image/png")}).json()
    for body in (raw, multipart):
        body.pop("latency_ms")
    assert raw == multipart


def test_jpeg_body_with_charset_parameter(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("L", (30, 30), 128).save(buffer, format="JPEG")
    assert post_raw(client, buffer.getvalue(), content_type="image/jpeg; charset=binary").status_code == 200


@pytest.mark.parametrize(
    ("query", "exit_index", "threshold"),
    [("?threshold=0", 0, 0.0), ("?threshold=1", NUM_EXITS - 1, 1.0), ("?budget=1", NUM_EXITS - 1, 1.0)],
)
def test_knobs_move_the_exit(client: TestClient, query: str, exit_index: int, threshold: float) -> None:
    body = post_raw(client, png_bytes(4), query).json()
    assert body["exit"]["index"] == exit_index
    assert body["threshold"] == threshold


@pytest.mark.parametrize(
    ("query", "threshold"),
    [("?mode=fast", 0.3), ("?mode=accurate", [0.95, 0.9]), ("?budget=0.8", [0.55, 0.7]), ("?budget=0.01", 0.3)],
)
def test_modes_and_budgets_report_the_calibrated_threshold(
    client: TestClient, query: str, threshold: float | list[float]
) -> None:
    assert post_raw(client, png_bytes(5), query).json()["threshold"] == threshold


def test_concurrent_requests_get_the_same_answers_as_sequential_ones(start_client) -> None:
    client = start_client(max_batch_size=8, max_wait_ms=20)
    images = [png_bytes(seed) for seed in range(16)]
    queries = ["?threshold=0.5", "?mode=accurate", "?threshold=0", ""] * 4
    sequential = [post_raw(client, data, query).json() for data, query in zip(images, queries, strict=True)]
    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(lambda args: post_raw(client, *args).json(), zip(images, queries, strict=True)))
    for alone, together in zip(sequential, concurrent, strict=True):
        assert (alone["exit"], alone["class_id"]) == (together["exit"], together["class_id"])
        assert alone["confidence"] == pytest.approx(together["confidence"], abs=1e-5)
