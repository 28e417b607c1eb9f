"""Live calibration: shadowed images measure each exit's agreement with the last; thresholds follow it."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from dynadapter.contract import confidence
from dynadapter.contract.model_repository import Manifest
from dynadapter.service.backends.onnxruntime import CPU
from dynadapter.service.live_calibration import PATIENCE, LiveCalibrator, wilson_bounds
from dynadapter.service.segment_runner import SegmentRunner, ShadowTrace
from tests.support.service import IMAGE, samples, value
from tests.support.tiny_onnx_model import NUM_EXITS, TinyWeights, png_bytes


def test_wilson_interval_matches_the_textbook_values() -> None:
    # 8 of 10 at 95% two-sided (z = 1.96): [0.4902, 0.9433] (Newcombe 1998, table I).
    lower, upper = wilson_bounds(np.array([8]), np.array([10]), z=1.96)
    assert (round(float(lower[0]), 4), round(float(upper[0]), 4)) == (0.4902, 0.9433)
    lower, upper = wilson_bounds(np.array([0, 30]), np.array([0, 30]))
    assert lower[0] == 0.0 and upper[0] == 1.0  # no trials: no evidence
    assert float(lower[1]) == pytest.approx(30 / (30 + 1.645**2))  # all agree: n / (n + z^2), short of 0.98


def test_shadowed_images_run_to_the_last_exit_and_report_every_exit(model_repo: Path, weights: TinyWeights) -> None:
    folder = model_repo / "tiny" / "1"
    runner = SegmentRunner([folder / f"segment_{k}.onnx" for k in range(NUM_EXITS)], [CPU], intra_op_threads=1)
    batch = np.random.default_rng(4).normal(0, 1, (6, 3, 8, 8)).astype(np.float32)
    shadow = np.array([True, False, True, False, True, False])
    stages = list(runner.cascade(batch, np.zeros((6, NUM_EXITS - 1)), shadow=shadow))  # all answer at exit 0
    assert [sorted(stage.exits) for stage in stages] == [list(range(6)), [], []]
    assert [stage.rows for stage in stages] == [6, 3, 3]  # the shadowed three run on
    traces = stages[-1].shadows
    assert sorted(traces) == [0, 2, 4] and all(trace.answered_exit == 0 for trace in traces.values())
    reference = weights.forward_all(batch)
    for position, trace in traces.items():
        expected = [confidence(reference[k][position : position + 1])[0] for k in range(NUM_EXITS)]
        np.testing.assert_allclose(trace.confidences, expected, atol=1e-5)
        assert list(trace.predictions) == [int(reference[k][position].argmax()) for k in range(NUM_EXITS)]


def traces(confidences: np.ndarray, agrees: np.ndarray) -> list[ShadowTrace]:
    """Shadow traces at exit 0 of a two-exit model: confidence there, and whether it agrees with exit 1."""
    return [
        ShadowTrace(answered_exit=0, confidences=(float(c), 1.0), predictions=(0 if a else 1, 0))
        for c, a in zip(confidences, agrees, strict=True)
    ]


@pytest.fixture
def two_exit_manifest(manifest: Manifest) -> Manifest:
    segments = manifest.segments[:2]
    modes = {
        "fast": manifest.modes["fast"].model_copy(update={"threshold": 0.3}),
        "balanced": manifest.modes["balanced"].model_copy(update={"threshold": 0.95}),
    }
    return manifest.model_copy(update={"segments": segments, "modes": modes})


def test_thresholds_rise_at_once_on_a_violation_and_fall_only_on_sustained_evidence(
    two_exit_manifest: Manifest,
) -> None:
    live = LiveCalibrator(two_exit_manifest, fraction=1.0, epsilon=0.02, every=1000, window=1000)
    confidences = np.linspace(0.5, 1.0, 1000, endpoint=False)
    for trace in traces(confidences, confidences >= 0.8):  # agreement is perfect from 0.8 up, poor below
        live.observe(trace)
    # fast (0.3) was violated: raised at once to the smallest certified threshold; balanced (0.95) holds
    # and would be certified lower, which needs PATIENCE re-choices in a row.
    assert live.thresholds("fast") == (0.8,) and live.thresholds("balanced") == (0.95,)
    for _ in range(PATIENCE - 1):
        live.rechoose()
    assert live.thresholds("balanced") == (0.8,)
    assert live.agreement(0) == pytest.approx(np.mean(confidences >= 0.8))  # what clients answered there got

    for trace in traces(confidences, confidences >= 0.9):  # drift: the same confidence now means less
        live.observe(trace)
    assert live.thresholds("fast") == (0.9,) and live.thresholds("balanced") == (0.9,)  # at once


def test_without_enough_evidence_nothing_moves(two_exit_manifest: Manifest) -> None:
    live = LiveCalibrator(two_exit_manifest, fraction=1.0, epsilon=0.02, every=20, window=100)
    for trace in traces(np.full(20, 0.99), np.ones(20, dtype=bool)):  # 20 agreeing images certify nothing
        live.observe(trace)
    assert live.thresholds("fast") == (0.3,) and live.thresholds("balanced") == (0.95,)


def test_live_calibration_in_the_service_counts_shadow_work_apart(start_client: Callable[..., TestClient]) -> None:
    client = start_client(live_calibration=1.0, live_calibration_every=10, live_calibration_window=100)
    modes = client.get("/v1/models").json()["models"][0]["modes"]
    assert modes["balanced"]["live_thresholds"] == [0.6, 0.6] and modes["accurate"]["live_thresholds"] == [0.95, 0.9]
    answers = [client.post("/classify", content=png_bytes(seed), headers=IMAGE).json() for seed in range(30)]
    metrics = samples(client)
    labels = {"model": "tiny", "version": "1"}
    for k in range(NUM_EXITS):  # one request at a time: the queue is empty, every image is shadowed
        answered_here = sum(a["exit"]["index"] == k for a in answers)
        assert value(metrics, "dynadapter_shadow_images_total", exit=str(k), **labels) == answered_here
    last = value(metrics, "dynadapter_shadow_agreements_total", exit=str(NUM_EXITS - 1), **labels)
    assert last == sum(a["exit"]["index"] == NUM_EXITS - 1 for a in answers)  # the last exit agrees with itself
    saved = sum(a["gflops"]["saved"] for a in answers)
    assert value(metrics, "dynadapter_flops_saved_total", **labels) == pytest.approx(saved * 1e9)  # not inflated
    assert value(metrics, "dynadapter_shadow_flops_total", **labels) == pytest.approx(saved * 1e9)
    live = client.get("/v1/models").json()["models"][0]["modes"]["balanced"]["live_thresholds"]
    gauges = [value(metrics, "dynadapter_live_threshold", mode="balanced", exit=str(k), **labels) for k in range(2)]
    assert gauges == live


def test_an_exit_clearly_below_its_target_with_nothing_certified_closes(two_exit_manifest: Manifest) -> None:
    live = LiveCalibrator(two_exit_manifest, fraction=1.0, epsilon=0.02, every=200, window=200)
    confidences = np.linspace(0.5, 1.0, 200, endpoint=False)
    for trace in traces(confidences, np.arange(200) % 2 == 0):  # half agree, at every confidence
        live.observe(trace)
    assert live.thresholds("fast") == (1.0,)  # 200 images at 50%: clearly below; every image goes on
    assert live.thresholds("balanced") == (0.95,)  # only 20 images reach 0.95: too few to call it either way


def test_the_same_image_sent_again_is_no_new_evidence(two_exit_manifest: Manifest) -> None:
    live = LiveCalibrator(two_exit_manifest, fraction=1.0, epsilon=0.02, every=10, window=1000)
    repeat = ShadowTrace(answered_exit=0, confidences=(0.31, 1.0), predictions=(0, 0), image_digest=b"same")
    assert [live.observe(repeat) for _ in range(500)] == [False] * 500  # one sample: never a re-choice
    for _ in range(PATIENCE):
        live.rechoose()
    assert live.thresholds("balanced") == (0.95,)  # 500 copies of one agreeing image certify nothing
