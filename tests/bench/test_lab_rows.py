"""The rows of the committed docs/results.json read into their models: every field as written, and the
page rendered from the models is the committed page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from dynadapter.bench.lab.results import render_markdown
from dynadapter.bench.lab.rows import AnswersRow, LoadRow, PrecisionRow, RatioCheck, TargetCheck
from dynadapter.bench.suite.targets import ClaimVerdict, Int8Verdict, ShiftVerdict

DOCS = Path(__file__).resolve().parents[2] / "docs"
RESULTS = json.loads((DOCS / "results.json").read_text())


@pytest.mark.parametrize(
    ("model", "rows"),
    [
        (LoadRow, RESULTS["serve"]["results"]),
        (AnswersRow, list(RESULTS["serve"]["answers"].values())),
        (RatioCheck, RESULTS["serve"]["targets"]),
        (PrecisionRow, RESULTS["serve_precision"]["results"]),
        (TargetCheck, RESULTS["serve_precision"]["targets"]),
        (ClaimVerdict, RESULTS["target"]),
        (ShiftVerdict, RESULTS["shift_target"]),
        (Int8Verdict, RESULTS["int8_target"]),
    ],
)
def test_a_row_model_keeps_every_field_it_names(model: type[BaseModel], rows: list[dict]) -> None:
    assert rows
    for row in rows:
        # A field added later with a default (LoadRow.p99_ms) reads as its default from older rows.
        expected = {name: row.get(name, field.default) for name, field in model.model_fields.items()}
        assert model.model_validate(row).model_dump() == expected


def test_a_load_row_counts_the_answered_requests() -> None:
    row = LoadRow.model_validate(RESULTS["serve"]["results"][0])
    assert row.answered == RESULTS["serve"]["results"][0]["requests"] - RESULTS["serve"]["results"][0]["errors"]


def test_the_page_rendered_through_the_models_is_the_committed_page() -> None:
    assert render_markdown(RESULTS) == (DOCS / "results.md").read_text()
