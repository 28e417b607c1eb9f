"""The latency controller: AIMD along the calibration curve, never below the floor, explicit knobs untouched."""

import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from dynadapter.contract.model_repository import Manifest, ModelLoadError
from dynadapter.service.latency_controller import LatencyController, OperatingPoint, accuracy_floor, operating_curve
from dynadapter.service.registry import check_repository
from dynadapter.service.settings import Settings
from tests.support.service import IMAGE, samples, value
from tests.support.stand_ins import SlowSegments
from tests.support.tiny_onnx_model import png_bytes

TARGET_S = 0.100
CURVE = [OperatingPoint(None if k == 0 else 1 - k / 10, 0.9 - k / 100, 1 - k / 10) for k in range(10)]  # 1.0 .. 0.1


def over(controller: LatencyController, now: float, latency_s: float) -> bool:
    """Requests at `latency_s` finish at `now`, then one control step with an empty queue."""
    for _ in range(20):
        controller.observe(now, latency_s)
    return controller.step(now, queue_delay_s=0.0)


def test_over_target_cuts_expected_flops_multiplicatively() -> None:
    controller = LatencyController(CURVE, TARGET_S, period_s=0.5)
    assert over(controller, 0.0, 0.2)  # a violation
    assert controller.point.flops_fraction == pytest.approx(0.8)  # the dearest point <= 0.85 x 1.0
    assert over(controller, 0.5, 0.2)
    assert controller.point.flops_fraction == pytest.approx(0.6)  # <= 0.85 x 0.8 = 0.68
    for now in (1.0, 1.5, 2.0, 2.5, 3.0, 3.5):
        over(controller, now, 0.2)
    assert controller.point == CURVE[-1]  # the cheapest point above the floor, and no further


def test_well_under_target_recovers_additively_and_in_between_it_stays() -> None:
    controller = LatencyController(CURVE, TARGET_S, period_s=0.5)
    over(controller, 0.0, 0.2)
    over(controller, 0.5, 0.2)
    assert controller.index == 4
    window = controller.window_s + 0.1
    assert not over(controller, 0.5 + window, 0.080)  # 80 ms: under the target, over 70% of it
    assert controller.index == 4
    calm = 0.5 + 2 * window  # only requests at 50 ms in the window from here on
    assert not over(controller, calm, 0.050)
    assert controller.index == 3  # +2% of the full FLOPs reaches no dearer point: one step back
    for k in range(1, 4):
        over(controller, calm + k * 0.5, 0.050)
    assert controller.index == 0 and not controller.degraded


def test_a_growing_queue_is_a_violation_before_any_request_finishes() -> None:
    controller = LatencyController(CURVE, TARGET_S, period_s=0.5)
    assert controller.step(0.0, queue_delay_s=0.3)
    assert controller.index == 2


def test_curve_starts_at_balanced_and_keeps_cheaper_rows_down_to_the_floor(manifest: Manifest) -> None:
    balanced = manifest.modes["balanced"]
    curve = operating_curve(manifest, balanced, floor=0.5)
    assert [(p.threshold, p.flops_fraction) for p in curve] == [(None, 0.7), (0.6, 0.6), (0.3, 0.3)]
    floored = operating_curve(manifest, balanced, floor=accuracy_floor(manifest, "fast"))  # fast: accuracy 0.6
    assert [p.threshold for p in floored] == [None, 0.6]  # the row at 0.3 has accuracy 0.575 < 0.6


@pytest.mark.parametrize("floor", ["1.5", "0", "fastest"])
def test_a_floor_that_means_nothing_is_refused(manifest: Manifest, floor: str) -> None:
    with pytest.raises(ValueError, match="accuracy_floor"):
        accuracy_floor(manifest, floor)


def test_under_load_requests_without_a_knob_get_cheaper_and_explicit_ones_do_not(
    start_client: Callable[..., TestClient],
) -> None:
    client = start_client(target_p95_ms=20, control_period_s=0.05, accuracy_floor="0.5")
    runner = client.app.state.service.registry.get().runner  # type: ignore[attr-defined]
    SlowSegments(runner, {0: 0.05})  # every request now takes > 50 ms: over the 20 ms target
    deadline = time.monotonic() + 10
    while client.post("/classify", content=png_bytes(1), headers=IMAGE).json()["threshold"] != 0.3:
        assert time.monotonic() < deadline, "the controller never reached the cheapest point"
    assert client.post("/classify?mode=auto", content=png_bytes(1), headers=IMAGE).json()["threshold"] == 0.3
    assert client.post("/classify?mode=balanced", content=png_bytes(1), headers=IMAGE).json()["threshold"] == 0.6
    assert client.post("/classify?threshold=0.9", content=png_bytes(1), headers=IMAGE).json()["threshold"] == 0.9
    metrics = samples(client)
    labels = {"model": "tiny", "version": "1"}
    assert value(metrics, "dynadapter_operating_threshold", **labels) == 0.3
    assert value(metrics, "dynadapter_operating_flops_fraction", **labels) == pytest.approx(0.3)
    assert value(metrics, "dynadapter_latency_target_violations_total", **labels) >= 2  # 0.7 -> 0.6 -> 0.3
    assert value(metrics, "dynadapter_degraded_seconds_total", **labels) > 0


def test_a_floor_the_model_does_not_have_stops_the_service_before_it_listens(
    make_settings: Callable, manifest: Manifest
) -> None:
    with pytest.raises(ModelLoadError, match="accuracy_floor 'fastest': not a mode of this model"):
        check_repository(make_settings(target_p95_ms=20, accuracy_floor="fastest"))
    check_repository(make_settings(accuracy_floor="fastest"))  # no latency target: no floor to honour


@pytest.mark.parametrize("floor", ["2", "0", "-0.5", "no such mode"])
def test_a_floor_that_is_no_mode_name_or_accuracy_is_a_settings_error(floor: str) -> None:
    with pytest.raises(ValidationError, match="accuracy_floor"):
        Settings(accuracy_floor=floor)


def test_under_load_with_live_calibration_the_cheaper_point_keeps_what_drift_raised(
    start_client: Callable[..., TestClient],
) -> None:
    client = start_client(
        target_p95_ms=20, control_period_s=0.05, accuracy_floor="0.5", live_calibration=0.01,
        live_calibration_every=10**6,
    )  # fmt: skip
    engine = client.app.state.service.registry.get()  # type: ignore[attr-defined]
    engine.live.modes["fast"].live[:] = [0.45, 0.5]  # as if drift had made live calibration raise `fast`
    SlowSegments(engine.runner, {0: 0.05})
    deadline = time.monotonic() + 10
    while engine.controller.point.threshold != 0.3:
        client.post("/classify", content=png_bytes(1), headers=IMAGE)
        assert time.monotonic() < deadline, "the controller never reached the cheapest point"
    answer = client.post("/classify", content=png_bytes(1), headers=IMAGE).json()
    assert answer["threshold"] == [0.45, 0.5]  # the curve's 0.3, held at the live `fast` per exit
