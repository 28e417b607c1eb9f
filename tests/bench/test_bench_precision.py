"""`dynadapter bench serve --precisions`: the CPU's peak from its own description, and the targets' arithmetic."""

import pytest

from dynadapter.bench.serving.precisions import check_targets, cpu_peak, render_markdown

XEON = "model name\t: Intel Xeon\ncpu MHz\t\t: 2300.000\nflags\t\t: fpu avx2 fma avx512f avx512_vnni\n"
EPYC = "model name\t: AMD EPYC\ncpu MHz\t\t: 2450.000\nflags\t\t: fpu avx avx2 fma\n"


def test_peak_follows_clock_vector_width_and_vnni() -> None:
    xeon = cpu_peak(1, XEON)
    assert (xeon["fp32_lanes"], xeon["vnni"]) == (16, True)
    assert xeon["fp32_gflops"] == pytest.approx(2.3 * 16 * 2 * 2)  # 147 GFLOP/s a core, as in issue 18
    assert xeon["int8_gflops"] == pytest.approx(4 * xeon["fp32_gflops"])
    epyc = cpu_peak(2, EPYC)
    assert (epyc["fp32_lanes"], epyc["vnni"]) == (8, False)
    assert epyc["fp32_gflops"] == pytest.approx(2 * 2.45 * 8 * 2 * 2)
    assert epyc["int8_gflops"] == pytest.approx(2 * epyc["fp32_gflops"])


def row(server: str, mode: str, clients: int, rps: float, p50: float, accuracy: float) -> dict:
    return {"server": server, "mode": mode, "concurrency": clients, "throughput_rps": rps, "p50_ms": p50,
            "accuracy": accuracy}  # fmt: skip


def test_targets_compare_int8_with_the_faster_onnxruntime_setting() -> None:
    rows = [
        row("fp32-onnxruntime", "balanced", 1, 10, 100, 0.95),
        row("fp32-onnxruntime-nospin", "balanced", 1, 12, 80, 0.95),
        row("int8-openvino", "balanced", 1, 30, 30, 0.95),
        row("fp32-onnxruntime", "balanced", 32, 20, 900, 0.95),
        row("fp32-onnxruntime-nospin", "balanced", 32, 25, 800, 0.95),
        row("int8-openvino", "balanced", 32, 70, 300, 0.945),
    ]
    throughput = next(c for c in check_targets(rows) if c["target"].startswith("throughput"))
    assert throughput["ratio"] == pytest.approx(70 / 25) and not throughput["met"]  # 2.8 < 3
    latency = next(c for c in check_targets(rows) if c["target"].startswith("p50"))
    assert latency["ratio"] == pytest.approx(30 / 80) and latency["met"]
    accuracy = next(c for c in check_targets(rows) if "accuracy int8 balanced" in c["target"])
    assert accuracy["ratio"] == pytest.approx(0.005) and not accuracy["met"]  # 0.5 points > 0.3


def test_page_explains_a_cpu_without_int8_instructions() -> None:
    section = {
        "cpu": cpu_peak(2, EPYC),
        "machine": {"load_average_1m": {"start": 1.0}},
        "settings": {"images": 10, "rounds": 1, "duration_s": 1, "threads": 2},
        "results": [],
        "targets": [],
    }
    assert "no int8 dot-product instructions" in render_markdown({"serve_precision": section})
    section["cpu"] = cpu_peak(1, XEON)
    assert "no int8 dot-product instructions" not in render_markdown({"serve_precision": section})


def test_page_says_how_int8_was_quantized_and_by_how_much_it_misses() -> None:
    targets = [{"target": "test accuracy int8 fast >= fp32 - 0.3 points", "ratio": 0.005, "met": False}]
    gate = {"method": "accuracy-control", "worst": -0.0025, "worst_at": "exit 1", "bound": 0.003}
    section = {
        "cpu": cpu_peak(1, XEON),
        "machine": {"load_average_1m": {"start": 1.0}},
        "settings": {"images": 10, "rounds": 1, "duration_s": 1, "threads": 2},
        "results": [],
        "targets": targets,
        "int8_gate": gate,
    }
    page = render_markdown({"serve_precision": section})
    assert "- test accuracy int8 fast >= fp32 - 0.3 points: int8 - fp32 -0.5 points (NOT met)" in page
    assert (
        "quantized by NNCF accuracy control (layers that cost accuracy kept in fp32); on the validation split "
        "their worst accuracy difference against fp32 over every exit and mode was -0.2 points (exit 1; bound 0.3)"
    ) in page
    section["int8_gate"] = None
    assert "no int8 segments that passed the export's gate" in render_markdown({"serve_precision": section})
