"""`dynadapter bench adapt`: its schedule, its summaries and the decisions on issue #17's targets, on exact
inputs; and one short run against real servers of the committed fixture model.

A benchmark, not a performance test: nothing here asserts a timing.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dynadapter.bench.lab.images import BenchImages
from dynadapter.bench.lab.load import Sample
from dynadapter.bench.serving import adapt, adapt_report, adapt_setup
from dynadapter.bench.serving.adapt_report import ramp_verdict
from dynadapter.bench.serving.adapt_setup import AdaptBenchConfig, Run
from dynadapter.errors import ConfigError, DataError


def step(clients: int, p95_ms: float | None, accuracy: float = 0.95, floor: float = 0.9) -> dict[str, Any]:
    return {"clients": clients, "p95_ms": p95_ms, "errors": 0, "accuracy": accuracy, "floor_accuracy": floor}


def steps(balanced: list[float], controller: list[float], clients: tuple[int, ...] = (1, 2, 4, 8, 16)) -> dict:
    return {
        "balanced": [step(c, p) for c, p in zip(clients, balanced, strict=True)],
        "controller": [step(c, p) for c, p in zip(clients, controller, strict=True)],
    }


def test_ramp_target_met_when_the_controller_holds_to_twice_the_load_balanced_fails_at() -> None:
    verdict = ramp_verdict(steps([10, 20, 45, 90, 180], [10, 20, 30, 40, 60]), target_ms=40)
    assert verdict == {
        "balanced_exceeds_at": 4,
        "controller_holds_up_to": 8,  # 40 ms is within a 40 ms target; 60 at 16 clients is not
        "required_clients": 8,
        "worst_p95_ms": 40,
        "worst_p95_over_target": 1.0,
        "failed_requests": 0,
        "lowest_accuracy_margin": 0.05,
        "met": True,
        "why": None,
    }


def test_ramp_target_missed_says_by_how_much() -> None:
    verdict = ramp_verdict(steps([10, 20, 45, 90, 180], [10, 20, 30, 50, 60]), target_ms=40)
    assert (verdict["met"], verdict["controller_holds_up_to"], verdict["required_clients"]) == (False, 4, 8)
    assert (verdict["worst_p95_ms"], verdict["worst_p95_over_target"]) == (50, 1.25)
    assert verdict["why"] == "controller misses the target from 8 clients"


def test_ramp_target_needs_the_accuracy_floor_at_every_judged_step() -> None:
    rows = steps([10, 20, 45, 90, 180], [10, 20, 30, 40, 200])
    rows["controller"][2]["accuracy"] = 0.88  # at 4 clients, 2 points under the floor
    rows["controller"][4]["accuracy"] = 0.10  # at 16 clients: beyond 2 x 4, not judged
    verdict = ramp_verdict(rows, target_ms=40)
    assert (verdict["met"], verdict["lowest_accuracy_margin"]) == (False, -0.02)
    assert verdict["why"] == "controller accuracy below the floor"


def test_ramp_target_undecided_without_a_load_that_balanced_fails_or_a_long_enough_ramp() -> None:
    never = ramp_verdict(steps([10, 20, 30, 35, 39], [10, 20, 30, 35, 39]), target_ms=40)
    assert never == {
        "balanced_exceeds_at": None,
        "controller_holds_up_to": 16,
        "met": False,
        "why": "fixed balanced stayed within the target at every step measured",
    }
    short = ramp_verdict(steps([10, 20, 45], [10, 20, 30], clients=(1, 2, 4)), target_ms=40)
    assert (short["met"], short["required_clients"], short["why"]) == (False, 8, "the ramp stops below 8 clients")
    failed = ramp_verdict(steps([10, 50, 60], [10, None, 30], clients=(1, 2, 4)), target_ms=40)
    assert (failed["met"], failed["controller_holds_up_to"], failed["why"]) == (
        False,
        1,
        "controller misses the target from 2 clients",  # a step with no answer keeps no latency
    )


def test_a_failed_request_is_no_latency_kept() -> None:
    rows = steps([10, 20, 30, 35, 39], [10, 20, 30, 35, 39])
    rows["balanced"][2]["errors"] = 1  # balanced fails a request at 4 clients: it no longer keeps the target
    rows["controller"][3]["errors"] = 2
    verdict = ramp_verdict(rows, target_ms=40)
    assert (verdict["balanced_exceeds_at"], verdict["controller_holds_up_to"], verdict["failed_requests"]) == (4, 4, 2)
    assert (verdict["met"], verdict["why"]) == (
        False,
        "controller misses the target from 8 clients; 2 requests failed",
    )


@pytest.mark.parametrize(
    ("live", "fixed", "live_ok", "fixed_below"),
    [(0.985, 0.95, True, True), (0.98, 0.97, True, True), (0.975, 0.95, False, True), (0.99, 0.98, True, False)],
)
def test_drift_target_bound_is_one_minus_epsilon_inclusive(
    live: float, fixed: float, live_ok: bool, fixed_below: bool
) -> None:
    verdict = adapt_report.drift_verdict({"live": live, "fixed": fixed}, epsilon=0.02)
    assert verdict == {
        "bound": 0.98,
        "live": live,
        "fixed": fixed,
        "live_ok": live_ok,
        "fixed_below": fixed_below,
        "met": live_ok and fixed_below,
    }


def sample(at: float, ms: float, class_id: int, target: int, image: int, **answer: Any) -> Sample:
    body = {"class_id": class_id, "threshold": 0.5, "exit_reason": "confident"} | answer
    return Sample(ms / 1000, True, correct=class_id == target, at=at, image=image, answer=body)


def test_stats_agreement_and_floor_are_judged_on_the_images_each_request_sent() -> None:
    samples = [
        sample(0.0, 10, class_id=1, target=1, image=0),
        sample(0.1, 20, class_id=2, target=3, image=1, threshold=0.7, exit_reason="deadline"),
        sample(0.2, 30, class_id=3, target=3, image=1, threshold=[0.6, 0.8]),  # a per-exit vector: 0.7
        Sample(0.5, False, at=0.3, image=0),
    ]
    row = adapt_report.stats(samples, last=[1, 3], floor=[True, False])
    assert row.requests == 4 and row.errors == 1
    assert row.p95_ms == pytest.approx(29.0)  # numpy's linear interpolation of 10, 20, 30
    assert row.accuracy == pytest.approx(2 / 3) and row.agreement == pytest.approx(2 / 3)
    assert row.floor_accuracy == pytest.approx(1 / 3)  # image 0 once (right), image 1 twice (wrong)
    assert row.threshold == pytest.approx((0.5 + 0.7 + 0.7) / 3)
    assert row.exit_reasons == {"confident": 2, "deadline": 1}


COMMITTED = json.loads((Path(__file__).resolve().parents[2] / "docs" / "results.json").read_text())["adapt"]


def test_a_step_and_the_verdicts_are_written_with_the_committed_keys_in_their_order() -> None:
    """results.json's ``adapt`` keeps its shape: a ramp step, the judged window and both verdicts."""
    samples = [sample(0.0, 10, class_id=1, target=1, image=0), sample(0.1, 20, class_id=2, target=3, image=1)]
    step = adapt_report.summarize_run(Run(2, samples, start=0.0, seconds=1.0), last=[1, 3], floor=[True, False])
    assert list(step) == list(COMMITTED["ramp"]["steps"]["balanced"][0])
    assert (step["clients"], step["seconds"], step["throughput_rps"]) == (2, 1.0, 2.0)
    judged = adapt_report.stats(samples, last=[1, 3]).model_dump(exclude_unset=True)
    assert list(judged) == list(COMMITTED["drift"]["judged"]["live"])
    verdict = ramp_verdict(steps([10, 20, 45, 90, 180], [10, 20, 30, 50, 60]), target_ms=40)
    assert list(verdict) == list(COMMITTED["ramp"]["verdict"])
    drift = adapt_report.drift_verdict({"live": 0.99, "fixed": 0.5}, epsilon=0.02)
    assert list(drift) == list(COMMITTED["drift"]["verdict"])


def test_buckets_count_requests_by_completion_time() -> None:
    # done at 0.5, 1.5, 1.9 and 2.4 s of a 2.4 s run: buckets [0, 1) and [1, 2.4] (the 0.4 s tail joins the last)
    samples = [sample(at, 500, 0, 0, 0) for at in (10.0, 11.0, 11.4, 11.9)]
    rows = adapt_report.buckets(Run(4, samples, start=10.0, seconds=2.4), offset=100.0, bucket_s=1.0)
    assert [row["t"] for row in rows] == pytest.approx([100.5, 101.7])
    assert [row["requests"] for row in rows] == [1, 3]
    assert [row["throughput_rps"] for row in rows] == pytest.approx([1.0, 3 / 1.4])
    assert all(row["clients"] == 4 for row in rows)


def test_timeline_lays_runs_end_to_end_with_their_scrapes() -> None:
    first = Run(1, [sample(5.0, 100, 0, 0, 0)], start=5.0, seconds=2.0, scrapes=[(4.0, {"a": 1.0}), (6.0, {"a": 2.0})])
    second = Run(2, [sample(50.0, 100, 0, 0, 0)], start=50.0, seconds=3.0, scrapes=[(51.5, {"a": 3.0})])
    line = adapt_report.timeline([first, second], bucket_s=1.0, yardsticks=[{}, {}])
    assert (line["starts"], line["seconds"]) == ([0.0, 2.0], [2.0, 3.0])
    assert line["scrapes"] == [{"t": 1.0, "a": 2.0}, {"t": 3.5, "a": 3.0}]  # the warm-up's scrape left out
    assert [(row["t"], row["clients"]) for row in line["series"]] == [(0.5, 1), (1.5, 1), (2.5, 2), (3.5, 2), (4.5, 2)]


def test_shadowed_before_the_judged_part_counts_every_exit_from_the_phase_start() -> None:
    def shadowed(at: float, per_exit: tuple[float, float]) -> tuple[float, dict[str, float]]:
        return at, {f'dynadapter_shadow_images_total{{exit="{k}"}}': v for k, v in enumerate(per_exit)} | {"x": 9.0}

    scrapes = [shadowed(9.5, (10, 5)), shadowed(10.0, (12, 5)), shadowed(14.0, (40, 20)), shadowed(16.0, (60, 30))]
    run = Run(8, [], start=10.0, seconds=10.0, scrapes=scrapes)
    assert (
        adapt_report.shadowed_before(run, fraction=0.5) == 60 - 17
    )  # from the scrape at the start to the last by 15 s
    assert adapt_report.shadowed_before(Run(8, [], start=10.0, seconds=10.0, scrapes=scrapes[2:]), 0.5) is None


def test_adaptation_series_keeps_the_adaptation_metrics_and_their_labels() -> None:
    exposition = "\n".join(
        [
            "# TYPE dynadapter_operating_threshold gauge",
            'dynadapter_operating_threshold{model="m",version="1"} 0.42',
            "# TYPE dynadapter_exit_reasons_total counter",
            'dynadapter_exit_reasons_total{model="m",version="1",reason="deadline"} 3.0',
            "# TYPE dynadapter_live_threshold gauge",
            'dynadapter_live_threshold{model="m",version="1",mode="balanced",exit="0"} 0.9',
            "# TYPE dynadapter_requests_total counter",
            'dynadapter_requests_total{model="m",version="1",code="200"} 7.0',
            "",
        ]
    )
    assert adapt.adaptation_series(exposition) == {
        "dynadapter_operating_threshold": 0.42,
        'dynadapter_exit_reasons_total{reason="deadline"}': 3.0,
        'dynadapter_live_threshold{exit="0",mode="balanced"}': 0.9,
    }


def test_ramp_and_drift_schedules(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    async def fake_loaded(server: str, query: str, images: BenchImages, clients: int, seconds: float, config) -> str:
        calls.append((server, query, images.data, clients, seconds))
        return f"{server}{query}@{clients}"

    monkeypatch.setattr(adapt, "loaded", fake_loaded)
    config = AdaptBenchConfig(clients="1,2,4,8", step_s=3, drift_clients=5, clean_s=10, drift_s=20)
    servers = {name: name for name in ("fixed", "controller", "live")}
    clean, drifted = BenchImages([b""], [0], "clean"), BenchImages([b""], [0], "drifted")
    runs = adapt.asyncio.run(adapt.ramp(servers, clean, config))
    assert [(server, query, clients) for server, query, _, clients, _ in calls] == [
        ("controller", "?mode=auto", 1),
        ("fixed", "?mode=balanced", 1),
        ("fixed", "?threshold=1", 1),
        ("fixed", "?mode=balanced", 2),  # each step starts one configuration later
        ("fixed", "?threshold=1", 2),
        ("controller", "?mode=auto", 2),
        ("fixed", "?threshold=1", 4),
        ("controller", "?mode=auto", 4),
        ("fixed", "?mode=balanced", 4),
        ("controller", "?mode=auto", 8),
        ("fixed", "?mode=balanced", 8),
        ("fixed", "?threshold=1", 8),
    ]
    assert runs["balanced"] == [
        "fixed?mode=balanced@1",
        "fixed?mode=balanced@2",
        "fixed?mode=balanced@4",
        "fixed?mode=balanced@8",
    ]
    assert {(images, seconds) for _, _, images, _, seconds in calls} == {("clean", 3)}
    calls.clear()
    inputs = adapt_setup.AdaptInputs(Path("repo"), "m", None, "builtin:digits", 0, clean, drifted, ["rotate"])
    runs = adapt.asyncio.run(adapt.drift(servers, inputs, config))
    assert calls == [
        ("live", "", "clean", 5, 10),
        ("fixed", "", "clean", 5, 10),
        ("live", "", "drifted", 5, 20),
        ("fixed", "", "drifted", 5, 20),
    ]
    assert runs == {"live": ["live@5", "live@5"], "fixed": ["fixed@5", "fixed@5"]}


def test_config_flags_parse_and_refuse() -> None:
    config = AdaptBenchConfig(photo_size="64x48", clients="1,4", corruptions="rotate,contrast")
    assert (config.photo_size, config.clients, config.corruptions) == ((64, 48), [1, 4], ["rotate", "contrast"])
    for bad in ({"photo_size": "64"}, {"corruptions": "rotate,smudge"}, {"severity": 6}, {"clients": "0"}):
        with pytest.raises(ValueError):
            AdaptBenchConfig(**bad)
    modes = {"fast": None, "balanced": None}
    assert adapt._floor_number("fast", modes) is None and adapt._floor_number("0.9", modes) == 0.9
    for bad in ("fastest", "0", "1.5"):
        with pytest.raises(ConfigError):
            adapt._floor_number(bad, modes)


def test_the_controller_and_live_servers_get_their_flags() -> None:
    config = AdaptBenchConfig(accuracy_floor="0.93", control_period_s=0.25, live_calibration=0.2, epsilon=0.01)
    inputs = adapt_setup.AdaptInputs(Path("repo"), "m", None, "builtin:digits", 0, None, None, [])
    argvs = adapt.server_argvs(inputs, config, target_ms=123.4567)
    fixed = argvs["fixed"]
    assert fixed[fixed.index("--model-repo") + 1] == "repo" and fixed[fixed.index("--model-name") + 1] == "m"
    assert fixed[fixed.index("--decode-queue") + 1] == "64"  # every client of the ramp may wait, none is refused
    assert argvs["controller"][len(fixed) :] == [
        *("--target-p95-ms", "123.457", "--accuracy-floor", "0.93", "--control-period-s", "0.25"),
    ]
    assert argvs["live"][len(fixed) :] == [
        *("--live-calibration", "0.2", "--live-calibration-epsilon", "0.01"),
        *("--live-calibration-every", "50", "--live-calibration-window", "200"),
    ]
    assert "controller" not in adapt.server_argvs(inputs, config)


def test_photo_inputs_come_from_the_models_builtin_data_set() -> None:
    assert adapt_setup._data_source(None, {"data": "builtin:digits", "petl": "adapter"}) == ("builtin:digits", 0)
    for training in (None, {"data": "/photos/train"}):
        with pytest.raises(DataError, match="--run-dir"):
            adapt_setup._data_source(None, training)


# -- one short run against real servers (the committed fixture model) ---------------------------------------------

CLIENTS = (1, 2)
IMAGES = 12


@pytest.fixture(scope="module")
def adapt_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    from dynadapter.export.demo import FIXTURE_REPO
    from tests.support.bench import bench

    docs = tmp_path_factory.mktemp("bench_adapt") / "docs"
    bench(
        "adapt",
        *("--model-repo", str(FIXTURE_REPO), "--model-name", "digits-tiny", "--docs", str(docs)),
        *("--images", str(IMAGES), "--photo-size", "64x48", "--clients", ",".join(map(str, CLIENTS))),
        *("--step-s", "1", "--drift-clients", "2", "--clean-s", "1.5", "--drift-s", "3"),
        # every image shadowed, thresholds re-chosen every 10 (a window of 60: 30 certify a threshold)
        *("--live-calibration", "1", "--calibration-every", "10", "--calibration-window", "60"),
        *("--bucket-s", "0.5", "--scrape-s", "0.25"),
    )
    return json.loads((docs / "results.json").read_text())["adapt"], docs


def test_every_step_and_phase_answers_every_request(adapt_results: tuple[dict[str, Any], Path]) -> None:
    section, _ = adapt_results
    steps = section["ramp"]["steps"]
    assert set(steps) == {"controller", "balanced", "threshold-1"}
    for rows in [*steps.values(), *section["drift"]["phases"].values()]:
        assert all(row["requests"] > 0 and row["errors"] == 0 for row in rows), rows
    assert [row["clients"] for row in steps["controller"]] == list(CLIENTS)
    for row in steps["threshold-1"]:  # full depth: the yardstick of agreement, answered at the last exit
        assert (row["threshold"], row["agreement"], row["exit_reasons"]) == (1.0, 1.0, {"last": row["requests"]})
    for row in steps["controller"]:
        assert set(row["exit_reasons"]) <= {"confident", "last", "deadline"}
        assert 0.0 <= row["floor_accuracy"] <= 1.0 and 0.0 <= row["accuracy"] <= 1.0


def test_the_adaptation_metrics_are_scraped(adapt_results: tuple[dict[str, Any], Path]) -> None:
    section, _ = adapt_results
    controller = section["ramp"]["timelines"]["controller"]["scrapes"]
    fractions = [row["dynadapter_operating_flops_fraction"] for row in controller]
    assert fractions and all(0.0 < value <= 1.0 for value in fractions)
    # the operating threshold: None (NaN in the exposition) at the default mode's own, else a threshold
    assert all(row["dynadapter_operating_threshold"] in (None, *np.linspace(0, 1, 201).round(3)) for row in controller)
    live = section["drift"]["timelines"]["live"]["scrapes"][-1]
    for k in range(3):  # the fixture has 4 exits: 3 early ones
        shadowed = live[f'dynadapter_shadow_images_total{{exit="{k}"}}']
        assert 0 <= live[f'dynadapter_shadow_agreements_total{{exit="{k}"}}'] <= shadowed
        assert 0.0 <= live[f'dynadapter_live_threshold{{exit="{k}",mode="balanced"}}'] <= 1.0
    assert sum(live[f'dynadapter_shadow_images_total{{exit="{k}"}}'] for k in range(3)) > 0
    assert live["dynadapter_shadow_flops_total"] > 0  # every image shadowed: the work past the answers


def test_targets_page_and_plots(adapt_results: tuple[dict[str, Any], Path]) -> None:
    section, docs = adapt_results
    assert isinstance(section["ramp"]["verdict"]["met"], bool) and isinstance(section["drift"]["verdict"]["met"], bool)
    assert section["drift"]["verdict"]["bound"] == 0.98
    page = (docs / "results.md").read_text()
    assert "## Runtime adaptation" in page and "| threshold-1 | 2 |" in page
    assert page.count("controller p95 <=") == 1 and "agreement with the last exit over the last 50%" in page
    for name in ("adapt_ramp.png", "adapt_drift.png"):
        assert (docs / "results" / name).read_bytes().startswith(b"\x89PNG")
