"""The accuracy suite reads a run's reports (``eval_<split>.json``, calibration.json) through
``bench/suite/rows.py``'s models: a cell's result holds the numbers as the reports wrote them; a cell's
record reads and writes back unchanged, and the committed records aggregate, through the models, into the
committed results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynadapter.bench.suite.accuracy import suite_plan
from dynadapter.bench.suite.aggregate import sections
from dynadapter.bench.suite.cells import (
    ABLATION_PETL,
    ABLATIONS,
    PROBE,
    PROBE_PETL,
    Cell,
    ablation_cells,
    calibrated_modes,
    main_cells,
    summarize_run,
    val_modes,
)
from dynadapter.bench.suite.rows import CellResult, EvalMode, EvalReport, StoredCell

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demo" / "dinov2-mnist"
RECORDS = sorted((ROOT / "docs" / "results" / "cells").glob("*/*.json"))


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


def test_val_modes_give_the_clean_val_accuracy_where_corrupted_copies_joined_the_calibration() -> None:
    """``--calibration-corrupted``: the page's validation accuracy is on the clean images alone, as every
    other recipe's is; the threshold is the one chosen on clean and corrupted images together."""
    mode = {"threshold": 0.9, "accuracy": 0.85, "val_accuracy": 0.93, "corrupted_accuracy": 0.77}
    calibrated = {"balanced": EvalMode.model_validate(mode)}
    assert val_modes(calibrated) == {"balanced": {"acc": 0.93, "threshold": 0.9}}


def test_the_demos_calibration_modes_read_as_written() -> None:
    recorded = json.loads((DEMO / "calibration.json").read_text())["modes"]
    assert val_modes(calibrated_modes(DEMO)) == {
        name: {"acc": m["accuracy"], "threshold": m["threshold"]} for name, m in recorded.items()
    }


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_committed_record_reads_into_its_model_and_writes_back_unchanged(path: Path) -> None:
    written = json.loads(path.read_text())
    stored = StoredCell.model_validate(written)
    result = stored.read()
    assert isinstance(result, CellResult) and result.seconds == written["result"]["seconds"]
    assert result.acc == written["result"]["acc"] and result.device == written["result"].get("device")
    assert stored.model_dump() == written
    # a record is saved compact with sorted keys: the same text again
    assert json.dumps(stored.model_dump(), sort_keys=True, separators=(",", ":")) + "\n" == path.read_text()


def test_the_committed_records_aggregate_into_the_committed_accuracy_sections() -> None:
    """What ``bench accuracy --report-only`` does on a fresh clone: every section it writes, to the byte."""
    committed = json.loads((ROOT / "docs" / "results.json").read_text())
    config = committed["config"]
    tasks, methods, seeds = committed["tasks"], committed["methods"], config["seeds"]
    # the variants and seeds the page's ablation ran (--ablations, --ablation-seeds)
    labels = {r["variant"]: r["label"] for r in committed["ablation"][1:]} or {
        v: label for v, (label, _) in ABLATIONS.items()
    }

    def record(cell: Cell) -> dict | None:
        path = ROOT / "docs" / "results" / "cells" / cell.task / f"{cell.petl}-{cell.variant}{cell.suffix}.json"
        return json.loads(path.read_text())["result"] if path.is_file() else None

    ablation_seeds = committed["ablation"][0].get("seeds") or seeds
    cells = main_cells(tasks, methods, seeds) + ablation_cells(tasks, ablation_seeds, labels)
    runs = {(*c.key, c.seed): record(c) for c in cells}
    probe = (PROBE_PETL, PROBE)
    plan = suite_plan(PROBE_PETL)
    written = sections(runs, tasks, methods, labels, ABLATION_PETL, config, probe, plan, ablation_seeds)
    assert json.dumps(written) == json.dumps({key: committed[key] for key in written})
