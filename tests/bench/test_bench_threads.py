"""`dynadapter bench threads`: the settings it tries, the occupancy and verdicts it computes, and one short sweep of
real servers on the tiny model (it measures; nothing here judges a number it measured)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from dynadapter.bench.lab.images import BenchImages, multipart_body
from dynadapter.bench.serving.threads import (
    Setting,
    ThreadsBenchConfig,
    occupancy_means,
    occupancy_totals,
    render_markdown,
    settings_for,
    sweep,
    verdicts,
)
from tests.support.tiny_onnx_model import NUM_EXITS, png_bytes


def test_each_backend_tries_its_default_every_thread_count_and_one_decode_thread() -> None:
    assert [(s.name, s.flags) for s in settings_for("onnxruntime", [1, 2])] == [
        ("default", ()),
        ("threads=1", ("--intra-op-threads", "1")),
        ("threads=1 spinning", ("--intra-op-threads", "1", "--allow-spinning")),
        ("threads=2", ("--intra-op-threads", "2")),
        ("threads=2 spinning", ("--intra-op-threads", "2", "--allow-spinning")),
        ("decode=1", ("--decode-workers", "1")),
    ]
    assert settings_for("openvino", [3]) == [  # OpenVINO does not spin
        Setting("openvino", "default", ()),
        Setting("openvino", "threads=3", ("--intra-op-threads", "3")),
        Setting("openvino", "decode=1", ("--decode-workers", "1")),
    ]


def exposition(runs: dict[str, tuple[float, float]]) -> list:
    """A scrape with `dynadapter_segment_batch_images` of one model version: segment -> (images, runs)."""
    lines = ["# TYPE dynadapter_segment_batch_images histogram"]
    for segment, (images, count) in runs.items():
        labels = f'model="m",version="1",segment="{segment}"'
        lines += [
            f'dynadapter_segment_batch_images_bucket{{{labels},le="+Inf"}} {count}',
            f"dynadapter_segment_batch_images_count{{{labels}}} {count}",
            f"dynadapter_segment_batch_images_sum{{{labels}}} {images}",
        ]
    return list(text_string_to_metric_families("\n".join(lines) + "\n"))


def test_occupancy_is_the_mean_images_per_segment_run_between_two_scrapes() -> None:
    before = occupancy_totals(exposition({"0": (10, 2), "1": (4, 2)}))
    after = occupancy_totals(exposition({"0": (10 + 64, 2 + 4), "1": (4 + 12, 2 + 4), "10": (3, 3)}))
    assert before == {"0": (10, 2), "1": (4, 2)}
    assert occupancy_means(before, after) == [16.0, 3.0, 1.0]  # segments in numeric order, 10 after 1
    assert occupancy_means(after, after) == [None, None, None]  # nothing ran


def test_the_default_is_judged_against_the_best_setting_of_its_backend() -> None:
    rows = [
        {"backend": "onnxruntime", "setting": "default", "throughput_rps": 96.0},
        {"backend": "onnxruntime", "setting": "threads=1", "throughput_rps": 100.0},
        {"backend": "openvino", "setting": "threads=1", "throughput_rps": 300.0},
        {"backend": "openvino", "setting": "default", "throughput_rps": 280.0},
    ]
    assert verdicts(rows) == [
        {
            "backend": "onnxruntime",
            "default_rps": 96.0,
            "best": "threads=1",
            "best_rps": 100.0,
            "ratio": 0.96,
            "within_tolerance": True,
        },
        {
            "backend": "openvino",
            "default_rps": 280.0,
            "best": "threads=1",
            "best_rps": 300.0,
            "ratio": 280 / 300,
            "within_tolerance": False,
        },
    ]


def test_a_short_sweep_answers_every_request_and_reports_each_setting(model_repo: Path) -> None:
    images = BenchImages([multipart_body(png_bytes(seed)) for seed in range(8)], [0] * 8, "tiny")
    config = ThreadsBenchConfig(
        backends=["onnxruntime"], threads=[1], concurrency=4, duration=30, requests=24, rounds=1, mode="balanced"
    )
    section = sweep(model_repo, "tiny", images, config)
    rows = {row["setting"]: row for row in section["results"]}
    assert list(rows) == ["default", "threads=1", "threads=1 spinning", "decode=1"]
    for row in rows.values():
        assert (row["requests"], row["errors"], row["precision"]) == (24, 0, "fp32-onnx")
        assert len(row["occupancy"]) == NUM_EXITS
        assert row["occupancy"][0] >= row["occupancy"][-1] >= 1  # deeper segments run on no more images
    (verdict,) = section["verdicts"]
    assert verdict["backend"] == "onnxruntime" and verdict["best"] in rows
    page = render_markdown({"threads": section})
    assert page.count("| onnxruntime |") == 4 and "- onnxruntime: the default serves" in page
