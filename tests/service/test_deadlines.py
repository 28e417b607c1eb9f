"""Anytime answers: an image whose next segment would end past its deadline leaves with the exit it has."""

from collections.abc import Callable
from pathlib import Path
from time import perf_counter

import numpy as np
import pytest
from fastapi.testclient import TestClient

from dynadapter.service.backends.onnxruntime import CPU
from dynadapter.service.deadlines import NO_DEADLINE, SegmentTimes
from dynadapter.service.segment_runner import SegmentRunner
from tests.support.service import IMAGE, assert_error, samples, value
from tests.support.stand_ins import SlowSegments
from tests.support.tiny_onnx_model import NUM_EXITS, TinyWeights, png_bytes

RUN_TO_THE_END = "threshold=1"


def test_segment_times_follow_each_batch_size_and_scale_up_from_smaller_ones() -> None:
    times = SegmentTimes(num_segments=2, smoothing=0.5)
    assert times.estimate(0, 8) == 0.0  # nothing measured yet
    times.record(0, 4, 0.010)
    times.record(0, 4, 0.020)  # exponentially weighted: 0.5 * 0.010 + 0.5 * 0.020
    assert times.estimate(0, 4) == pytest.approx(0.015)
    assert times.estimate(0, 8) == pytest.approx(0.030)  # from a smaller batch: linear in rows
    times.record(0, 16, 0.040)
    assert times.estimate(0, 12) == pytest.approx(0.040)  # nearest is 16 (a larger batch): taken as is
    assert times.estimate(0, 1) == pytest.approx(0.015)
    assert times.estimate(1, 4) == 0.0 and times.slowest(4) == pytest.approx(0.015)


@pytest.fixture
def slow_runner(model_repo: Path) -> SegmentRunner:
    folder = model_repo / "tiny" / "1"
    return SegmentRunner([folder / f"segment_{k}.onnx" for k in range(NUM_EXITS)], [CPU], intra_op_threads=1)


def test_a_rushed_image_leaves_at_the_exit_it_has_and_the_others_run_on(
    slow_runner: SegmentRunner, weights: TinyWeights
) -> None:
    SlowSegments(slow_runner, {1: 0.2}, rows=(4,))
    batch = np.random.default_rng(3).normal(0, 1, (4, 3, 8, 8)).astype(np.float32)
    now = perf_counter()
    deadlines = np.array([now + 0.1, NO_DEADLINE, now + 0.1, NO_DEADLINE])
    # Threshold 1 everywhere: no image may leave early by confidence, so without a deadline the early
    # heads would be skipped; the rushed images still need exit 0's answer.
    stages = list(slow_runner.cascade(batch, np.ones((4, NUM_EXITS - 1)), deadlines))
    results = {position: result for stage in stages for position, result in stage.exits.items()}
    reference = weights.forward_all(batch)
    assert [(results[i].exit_index, results[i].reason) for i in range(4)] == [
        (0, "deadline"), (NUM_EXITS - 1, "last"), (0, "deadline"), (NUM_EXITS - 1, "last")
    ]  # fmt: skip
    for i in range(4):
        np.testing.assert_allclose(results[i].logits, reference[results[i].exit_index][i], atol=1e-5)
    assert [stage.rows for stage in stages] == [4, 2, 2]


def test_deadline_ms_gives_the_best_exit_so_far_not_a_504(start_client: Callable[..., TestClient]) -> None:
    client = start_client()
    runner = client.app.state.service.registry.get().runner  # type: ignore[attr-defined]
    SlowSegments(runner, {1: 0.3})
    before = samples(client)
    rushed = client.post(f"/classify?{RUN_TO_THE_END}&deadline_ms=200", content=png_bytes(1), headers=IMAGE)
    assert rushed.status_code == 200
    assert (rushed.json()["exit"]["index"], rushed.json()["exit_reason"]) == (0, "deadline")
    patient = client.post(f"/classify?{RUN_TO_THE_END}", content=png_bytes(1), headers=IMAGE).json()
    assert (patient["exit"]["index"], patient["exit_reason"]) == (NUM_EXITS - 1, "last")
    after = samples(client)
    for reason, count in (("deadline", 1), ("last", 1), ("confident", 0)):
        delta = value(after, "dynadapter_exit_reasons_total", model="tiny", version="1", reason=reason) - value(
            before, "dynadapter_exit_reasons_total", model="tiny", version="1", reason=reason
        )
        assert delta == count


def test_504_only_when_not_even_the_first_exit_can_answer_in_time(start_client: Callable[..., TestClient]) -> None:
    client = start_client()
    runner = client.app.state.service.registry.get().runner  # type: ignore[attr-defined]
    SlowSegments(runner, {0: 0.3})
    assert_error(client.post("/classify?deadline_ms=100", content=png_bytes(2), headers=IMAGE), 504, "timeout")
    assert client.post("/classify?deadline_ms=2000", content=png_bytes(2), headers=IMAGE).status_code == 200


def test_oip_timeout_is_the_deadline_and_exit_reason_an_output(start_client: Callable[..., TestClient]) -> None:
    client = start_client()
    runner = client.app.state.service.registry.get().runner  # type: ignore[attr-defined]
    SlowSegments(runner, {1: 0.3})
    pixels = np.zeros((1, 3, 8, 8), np.float32)
    body = {
        "inputs": [
            {"name": "pixels", "datatype": "FP32", "shape": list(pixels.shape), "data": pixels.ravel().tolist()}
        ],
        "outputs": [{"name": "exit_index"}, {"name": "exit_reason"}],
        "parameters": {"threshold": 1.0, "timeout": 200_000},
    }
    outputs = {o["name"]: o["data"] for o in client.post("/v2/models/tiny/infer", json=body).json()["outputs"]}
    assert outputs == {"exit_index": [0], "exit_reason": ["deadline"]}


def test_deadline_ms_must_be_positive(client: TestClient) -> None:
    for bad in ("0", "-5", "nan", "soon"):
        response = client.post(f"/classify?deadline_ms={bad}", content=png_bytes(1), headers=IMAGE)
        assert_error(response, 422, "invalid_parameter")
