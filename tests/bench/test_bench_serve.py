"""`dynadapter bench serve` on a tiny run: every server answers every request and the results page is written.

A benchmark, not a performance test: nothing here asserts a timing. Every variant runs as a real
server process on loopback, loaded by wrk for 2 s per variant and concurrency (about a minute on 2 cores,
most of it exporting the tiny model twice). The Triton peers need their own environment (`make triton-venv`):
they are left out here. `balanced-grpc` is timed by Python gRPC clients (wrk speaks no gRPC).
"""

import json
from pathlib import Path
from typing import Any

import pytest

from dynadapter.bench.lab.images import bench_images
from dynadapter.bench.lab.load import Sample
from dynadapter.bench.lab.wrk import summarize_rounds
from dynadapter.bench.serving.config import TRITON_VARIANTS, TUNED, VARIANTS, ServeBenchConfig
from dynadapter.bench.serving.equal_accuracy import cheapest_within
from dynadapter.training.data import run_split
from dynadapter.training.run_dir import read_calibration, read_config
from tests.support.bench import bench, serve_args
from tests.support.tiny import train_tiny_run

CONCURRENCY = (1, 2)
REQUESTS = 12
IMAGES = 40
FULL_DEPTH = ("threshold-1", "static", "litserve-onnx", "litserve-torch")
MEASURED = [name for name in VARIANTS if name not in TRITON_VARIANTS]


#: One image's share of the accuracy, and float rounding (0.2 - 0.175 is 0.025000000000000022).
ONE_IMAGE = 1 / IMAGES + 1e-9


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("bench_serve_run") / "run")


@pytest.fixture(scope="module")
def serve_results(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> tuple[dict[str, Any], Path]:
    root, run = tmp_path_factory.mktemp("bench_serve"), tiny_run
    docs = root / "docs"
    bench(*serve_args(run, docs, CONCURRENCY, REQUESTS, IMAGES), "--duration", "2", "--variants", ",".join(MEASURED))
    return json.loads((docs / "results.json").read_text())["serve"], docs


def test_every_variant_answers_every_timed_request(serve_results: tuple[dict[str, Any], Path]) -> None:
    section, _ = serve_results
    rows = {(row["variant"], row["concurrency"]): row for row in section["results"]}
    assert set(rows) == {(name, clients) for name in MEASURED for clients in CONCURRENCY}
    for row in rows.values():
        load = "python-grpc" if VARIANTS[row["variant"]].protocol == "grpc" else "wrk"
        assert row["errors"] == 0 and row["requests"] > 0 and row["load"] == load, row
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] and row["throughput_rps"] > 0, row
        assert row["throughput_rps_rounds"] == [pytest.approx(row["throughput_rps"])], row  # one round


def test_full_depth_variants_give_the_same_answers(serve_results: tuple[dict[str, Any], Path]) -> None:
    """The static graph, LitServe on onnxruntime and PyTorch, and the cascade at threshold 1 are one model."""
    answers = serve_results[0]["answers"]
    assert all((answer["images"], answer["errors"]) == (IMAGES, 0) for answer in answers.values()), answers
    assert "balanced-oip" not in answers  # OIP variants are only timed
    accuracies = [answers[name]["accuracy"] for name in FULL_DEPTH]
    assert max(accuracies) - min(accuracies) <= ONE_IMAGE, accuracies  # one near-tie may flip between runtimes


def test_the_grpc_variant_answers_as_balanced_does_over_rest(serve_results: tuple[dict[str, Any], Path]) -> None:
    """`balanced-grpc` is the cascade server at mode balanced over OIP ModelInfer: the same images give the same
    accuracy and FLOPs as `balanced` over /classify; its timed rows are marked as a Python client's on the page."""
    section, docs = serve_results
    grpc, rest = section["answers"]["balanced-grpc"], section["answers"]["balanced"]
    assert (grpc["images"], grpc["errors"]) == (IMAGES, 0)
    assert grpc["accuracy"] == rest["accuracy"]
    assert grpc["gflops_per_image"] == pytest.approx(rest["gflops_per_image"], rel=1e-6)
    page = (docs / "results.md").read_text()
    assert "| balanced-grpc (Python client) | 2 |" in page and "| balanced | 2 |" in page
    assert 'Rows marked "(Python client)" (`balanced-grpc`)' in page and "not directly comparable" in page


def test_grpc_calls_become_a_wrk_round() -> None:
    """A failed call counts as wrk's non-2xx answer; the latencies are the answered calls' (microseconds)."""
    from dynadapter.bench.serving.grpc_rounds import as_round

    calls = [Sample(0.010, ok=True), Sample(0.030, ok=True), Sample(0.010, ok=True), Sample(0.5, ok=False)]
    one = as_round(calls, 2.0)
    assert (one.requests, one.errors, one.answered, one.seconds) == (4, 1, 3, 2.0)
    assert one.latency_us == [(10_000, 2), (30_000, 1)]
    row = summarize_rounds("balanced-grpc", 2, [one])
    assert (row["requests"], row["errors"], row["p50_ms"], row["throughput_rps"]) == (4, 1, 10.0, 1.5)


def test_reported_flops_match_the_manifests(serve_results: tuple[dict[str, Any], Path]) -> None:
    section, _ = serve_results
    model, answers = section["model"], section["answers"]
    assert answers["static"]["gflops_per_image"] == pytest.approx(model["static_gflops"])
    assert model["static_gflops"] < model["gflops_full"]  # the single graph has no early heads
    # Threshold 1 runs every block and skips every (gated) early head: the single graph's work.
    assert answers["threshold-1"]["gflops_per_image"] == pytest.approx(model["static_gflops"])
    assert answers["litserve-onnx"]["gflops_per_image"] is None  # LitServe does not report FLOPs
    assert answers["balanced"]["gflops_per_image"] <= model["gflops_full"]


def test_targets_and_page(serve_results: tuple[dict[str, Any], Path]) -> None:
    section, docs = serve_results
    targets = {(check["target"], check["concurrency"]) for check in section["targets"]}
    assert ("p50 balanced / threshold-1 <= 0.6", 1) in targets
    assert ("throughput equal-accuracy / litserve-torch >= 1.8", max(CONCURRENCY)) in targets
    assert all(isinstance(check["met"], bool) and check["ratio"] > 0 for check in section["targets"])
    page = (docs / "results.md").read_text()
    assert "## Serving" in page and "| litserve-torch | 2 |" in page


def test_equal_accuracy_point_is_the_cheapest_calibrated_threshold_as_accurate_as_static(
    serve_results: tuple[dict[str, Any], Path], tiny_run: Path
) -> None:
    section, docs = serve_results
    point, answers = section["equal_accuracy"], section["answers"]
    table = read_calibration(tiny_run)["calibration"]["table"]  # what the export put in the manifest
    assert point["threshold"] in {row["threshold"] for row in table} and point["images"] == IMAGES
    assert point["candidates"] == len({row["threshold"] for row in table})
    # PyTorch's last exit is the static graph: the served static graph agrees (one near-tie may flip).
    assert abs(answers["static"]["accuracy"] - point["static_accuracy"]) <= ONE_IMAGE
    assert point["within_tolerance"] == (point["accuracy"] >= point["static_accuracy"] - 0.005)
    assert abs(answers["equal-accuracy"]["accuracy"] - point["accuracy"]) <= ONE_IMAGE
    assert answers["equal-accuracy"]["gflops_per_image"] == pytest.approx(point["gflops"], rel=1e-3)
    assert point["served"]["accuracy"] == answers["equal-accuracy"]["accuracy"]
    assert "Equal accuracy: threshold" in (docs / "results.md").read_text()


def test_cheapest_within_half_a_point() -> None:
    rows = [
        {"threshold": 0.5, "accuracy": 0.900, "gflops": 1.0},
        {"threshold": 0.8, "accuracy": 0.946, "gflops": 2.0},
        {"threshold": 0.9, "accuracy": 0.951, "gflops": 3.0},
        {"threshold": 1.0, "accuracy": 0.950, "gflops": 4.0},
    ]
    assert cheapest_within(rows, reference=0.950)["threshold"] == 0.8  # 0.946 >= 0.945
    assert cheapest_within(rows, reference=0.9515)["threshold"] == 0.9  # 0.946 < 0.9465
    assert cheapest_within(rows, reference=0.99)["threshold"] == 0.9  # none close: the most accurate


def test_the_whole_test_split_is_sent_by_default(tiny_run: Path) -> None:
    images = bench_images(tiny_run, None)
    split = run_split(tiny_run, read_config(tiny_run), "test")
    assert len(images.bodies) == len(split) == len(images.targets)
    assert images.targets == [int(t) for t in split.targets]


def test_a_target_line_shows_a_ratio_just_over_its_bound_as_over_it() -> None:
    """Measured: threshold 1 at 1.0504x the static graph's p50 against the 1.05 bound printed as 1.050."""
    from dynadapter.bench.serving.serve import ServeRows, _target_lines

    def rows(*checks: dict) -> ServeRows:
        return ServeRows.model_validate({"results": [], "answers": {}, "targets": checks})

    check = {"target": "p50 threshold-1 / static <= 1.05", "ratio": 1.0504, "bound": 1.05, "concurrency": 1}
    [line] = _target_lines(rows({**check, "met": False}))
    assert line == "MISSED p50 threshold-1 / static <= 1.05 at 1 client: 1.0504, 0.04% over the bound"
    [line] = _target_lines(rows({**check, "ratio": 2.131, "bound": 1.8, "concurrency": 32, "met": True}))
    assert line.endswith("at 32 clients: 2.1310, 18.39% over the bound")


def test_every_variant_gets_a_second_row_on_its_tuned_server(tmp_path: Path) -> None:
    """`--tuned-threads N`: each variant again as `<name>+tuned`, on a copy of its server with N intra-op threads
    and onnxruntime not spinning; the first row keeps each runtime's default threading."""
    from dynadapter.bench.serving.inputs import BenchInputs, server_commands
    from dynadapter.bench.serving.serve import resolved_variants

    config = ServeBenchConfig(variants=["balanced", "litserve-onnx"], tuned_threads=1)
    variants = resolved_variants(None, config)
    assert list(variants) == ["balanced", "balanced" + TUNED, "litserve-onnx", "litserve-onnx" + TUNED]
    assert (variants["balanced" + TUNED].server, variants["balanced" + TUNED].query) == (
        "cascade+tuned",
        "?mode=balanced",
    )
    inputs = BenchInputs(tmp_path, tmp_path / "repo", "m", tmp_path / "static_run", tmp_path / "static_repo")
    commands = server_commands(inputs, config)
    default, tuned = commands["cascade"][0], commands["cascade" + TUNED][0]
    # the default row: the service's own threads (0) and spinning (off); the tuned row: its threads
    assert default[default.index("--intra-op-threads") + 1] == "0" and "--no-allow-spinning" in default
    assert tuned[tuned.index("--intra-op-threads") + 1] == "1" and "--no-allow-spinning" in tuned
    litserve = commands["litserve-onnx" + TUNED][0]
    assert litserve[litserve.index("--threads") + 1] == "1"
    assert "--grpc-port" not in default[default.index("--grpc-port") + 2 :]  # no gRPC variant: the bench's 0 only


def test_a_grpc_variant_gives_each_cascade_server_a_grpc_port_of_its_own(tmp_path: Path) -> None:
    """The service's parser takes the last --grpc-port: after service_argv's 0, a free port per cascade server."""
    from dynadapter.bench.serving.inputs import BenchInputs, server_commands

    config = ServeBenchConfig(variants=["balanced-grpc", "static"], tuned_threads=1)
    inputs = BenchInputs(tmp_path, tmp_path / "repo", "m", tmp_path / "static_run", tmp_path / "static_repo")
    commands = server_commands(inputs, config)
    ports = {}
    for name in ("cascade", "cascade" + TUNED, "static"):
        argv = commands[name][0]
        ports[name] = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--grpc-port"]
    assert ports["static"] == ["0"]
    assert ports["cascade"][0] == ports["cascade" + TUNED][0] == "0"
    assert 0 < int(ports["cascade"][-1]) != int(ports["cascade" + TUNED][-1]) > 0
    photos = server_commands(inputs, config.model_copy(update={"photos": True}))
    assert [arg for arg in photos["cascade"][0] if arg == "--grpc-port"] == ["--grpc-port"]  # no listener there
