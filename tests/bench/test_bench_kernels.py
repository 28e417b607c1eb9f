"""`dynadapter bench kernels` on the tiny model: every precision's segments and cascade at every batch size, the
ceiling, and the end-to-end share of it from a serve section. A benchmark: nothing here asserts a timing."""

import json
from pathlib import Path

import pytest

from dynadapter.bench.serving.kernels import CASCADE, KernelsConfig, end_to_end_share, kernels_benchmark
from dynadapter.contract.model_repository import load_model
from tests.support.bench import bench
from tests.support.tiny_onnx_model import NUM_EXITS, OPENVINO, TinyWeights, segment_gflops, write_model_version

BATCHES = (1, 3)


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("kernels")
    write_model_version(root / "repo", TinyWeights.random(0))
    docs = root / "docs"
    bench(
        "kernels", "--model-repo", str(root / "repo"), "--batch-sizes", "1,3", "--duration", "0.02", "--docs", str(docs)
    )
    return json.loads((docs / "results.json").read_text())["kernels"], docs


def test_every_precision_segment_and_batch_is_measured(kernels: tuple[dict, Path]) -> None:
    section, _ = kernels
    precisions = ["fp32-onnx", *(["fp32-openvino"] if OPENVINO else [])]
    segments = [*map(str, range(NUM_EXITS)), CASCADE]
    keys = [(row["precision"], row["segment"], row["batch"]) for row in section["results"]]
    assert sorted(keys) == sorted((p, s, b) for p in precisions for s in segments for b in BATCHES)
    for row in section["results"]:
        gmacs = (
            sum(map(segment_gflops, range(NUM_EXITS)))
            if row["segment"] == CASCADE
            else segment_gflops(int(row["segment"]))
        )
        assert row["images_s"] == pytest.approx(row["batch"] * 1000 / row["ms"])
        assert row["gmac_s"] == pytest.approx(row["images_s"] * gmacs)


def test_the_ceiling_is_the_best_cascade_rate_of_each_precision(kernels: tuple[dict, Path]) -> None:
    section, docs = kernels
    for precision, ceiling in section["ceilings"].items():
        cascade = [r for r in section["results"] if r["precision"] == precision and r["segment"] == CASCADE]
        best = max(cascade, key=lambda r: r["gmac_s"])
        assert (ceiling["batch"], ceiling["gmac_s"]) == (best["batch"], best["gmac_s"])
    assert section["default_precision"] in section["ceilings"]
    assert section["end_to_end"] is None  # no serve section in these docs
    page = (docs / "results.md").read_text()
    assert "## Kernel ceiling" in page and "| fp32-onnx | cascade |" in page and section["machine"]["processor"] in page


def test_the_end_to_end_share_is_balanceds_rate_at_the_top_concurrency_over_the_ceiling() -> None:
    section = {
        "model": {"name": "mnist"},
        "default_precision": "int8-openvino",
        "ceilings": {"int8-openvino": {"batch": 16, "gmac_s": 500.0}},
    }
    serve = {
        "created_utc": "2026-12-07T00:00:00Z",
        "model": {"name": "mnist"},
        "settings": {"concurrency": [1, 32]},
        "results": [
            {"variant": "balanced", "concurrency": 1, "throughput_rps": 80.0},
            {"variant": "balanced", "concurrency": 32, "throughput_rps": 360.0},
        ],
        "answers": {"balanced": {"gflops_per_image": 0.68}},
    }
    share = end_to_end_share(section, serve)
    assert share is not None
    assert (share["connections"], share["served_gmac_s"]) == (32, pytest.approx(360 * 0.68))
    assert share["share"] == pytest.approx(360 * 0.68 / 500) and share["met"] is False
    assert end_to_end_share(section, {**serve, "answers": {}}) is None
    # another model's serve run is no share of this model's ceiling
    assert end_to_end_share(section, {**serve, "model": {"name": "digits-tiny"}}) is None


def test_the_model_repository_is_read_as_the_service_reads_it(tmp_path: Path) -> None:
    write_model_version(tmp_path / "repo", TinyWeights.random(1))
    config = KernelsConfig(model_repo=tmp_path / "repo", batch_sizes=[2], duration=0.01, docs=tmp_path / "docs")
    section = kernels_benchmark(config)
    assert section["model"]["gflops_full"] == pytest.approx(load_model(tmp_path / "repo").manifest.gflops_full)
