"""The accuracy suite reads a run's reports (``eval_<split>.json``, calibration.json) through
``bench/suite/rows.py``'s models: a cell's result holds the numbers as the reports wrote them."""

from __future__ import annotations

import json
from pathlib import Path

from dynadapter.bench.suite.cells import calibrated_modes, summarize_run, val_modes
from dynadapter.bench.suite.rows import EvalMode, EvalReport

DEMO = Path(__file__).resolve().parents[2] / "demo" / "dinov2-mnist"


def test_a_cells_result_holds_its_eval_reports_numbers() -> None:
    report = json.loads((DEMO / "eval_test.json").read_text())
    reference = 2.0
    result = summarize_run(EvalReport.model_validate(report), reference, 12.34)
    assert (result["acc"], result["gflops"], result["seconds"]) == (
        report["exit_accuracy"][-1],
        report["cumulative_gflops"][-1],
        12.3,
    )
    assert result["modes"] == {
        name: {
            "threshold": m["threshold"],
            "acc": m["accuracy"],
            "gflops": m["gflops"],
            "saved": 1.0 - m["gflops"] / reference,
        }
        for name, m in report["modes"].items()
    }
    assert result["sweep"] == [[r["gflops"], r["accuracy"]] for r in report["sweep"]]
    assert "val_modes" not in result  # the demo's report has no ``calibrated`` part


def test_val_modes_keep_the_bootstrap_interval_where_calibration_has_one() -> None:
    spread = {"single_threshold": 0.5, "threshold_low": 0.25, "threshold_high": 0.75, "accuracy_low": 0.9}
    calibrated = {
        "fast": EvalMode.model_validate({"threshold": 0.0, "accuracy": 0.8, "spread": spread}),
        "accurate": EvalMode.model_validate({"threshold": 0.9, "accuracy": 0.95}),
    }
    modes = val_modes(calibrated)
    assert modes == {
        "fast": {"acc": 0.8, "threshold": 0.0, "threshold_low": 0.25, "threshold_high": 0.75},
        "accurate": {"acc": 0.95, "threshold": 0.9},
    }
    assert list(modes["fast"]) == ["acc", "threshold", "threshold_low", "threshold_high"]  # the order written


def test_the_demos_calibration_modes_read_as_written() -> None:
    recorded = json.loads((DEMO / "calibration.json").read_text())["modes"]
    assert val_modes(calibrated_modes(DEMO)) == {
        name: {"acc": m["accuracy"], "threshold": m["threshold"]} for name, m in recorded.items()
    }
