"""`dynadapter bench serve` on a tiny run: every server answers every request and the results page is written.

A benchmark, not a performance test: nothing here asserts a timing. Every variant runs as a real
server process on loopback (about a minute on 2 cores, most of it exporting the tiny model twice).
"""

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from dynadapter.bench.commands import add_bench, run_bench
from dynadapter.bench.serve import VARIANTS
from tests.tiny import train_tiny_run

CONCURRENCY = (1, 2)
REQUESTS = 12
IMAGES = 40
FULL_DEPTH = ("threshold-1", "static", "litserve-onnx", "litserve-torch")


def bench(*argv: str) -> None:
    """What ``dynadapter bench ...`` runs (bench/commands.py registers add_bench / run_bench)."""
    parser = argparse.ArgumentParser(prog="dynadapter")
    add_bench(parser.add_subparsers(dest="command", required=True))
    run_bench(parser.parse_args(["bench", *argv]))


@pytest.fixture(scope="module")
def serve_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("bench_serve")
    run = train_tiny_run(root / "run")
    docs = root / "docs"
    # --duration is generous so that --requests bounds every measurement: each must answer exactly that many.
    bench(
        "serve",
        "--run-dir",
        str(run),
        "--concurrency",
        ",".join(map(str, CONCURRENCY)),
        "--requests",
        str(REQUESTS),
        "--duration",
        "60",
        "--rounds",
        "1",
        "--images",
        str(IMAGES),
        "--docs",
        str(docs),
    )
    return json.loads((docs / "results.json").read_text())["serve"], docs


def test_every_variant_answers_every_timed_request(serve_results: tuple[dict[str, Any], Path]) -> None:
    section, _ = serve_results
    rows = {(row["variant"], row["concurrency"]): row for row in section["results"]}
    assert set(rows) == {(name, clients) for name in VARIANTS for clients in CONCURRENCY}
    for row in rows.values():
        assert (row["requests"], row["errors"]) == (REQUESTS, 0), row
        assert 0 < row["p50_ms"] <= row["p95_ms"] and row["throughput_rps"] > 0, row


def test_full_depth_variants_give_the_same_answers(serve_results: tuple[dict[str, Any], Path]) -> None:
    """The static graph, LitServe on onnxruntime and PyTorch, and the cascade at threshold 1 are one model."""
    answers = serve_results[0]["answers"]
    assert all((answer["images"], answer["errors"]) == (IMAGES, 0) for answer in answers.values()), answers
    accuracies = [answers[name]["accuracy"] for name in FULL_DEPTH]
    assert max(accuracies) - min(accuracies) <= 1 / IMAGES, accuracies  # one near-tie may flip between runtimes


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
    assert ("throughput balanced / litserve-torch >= 1.8", max(CONCURRENCY)) in targets
    assert all(isinstance(check["met"], bool) and check["ratio"] > 0 for check in section["targets"])
    page = (docs / "results.md").read_text()
    assert "## Serving" in page and "| litserve-torch | 2 |" in page
