"""The rows of the committed docs/results.json read into their models (the lab's shared rows, the suite's and
the serving wing's): every field as written, and the whole page, every section rendered from the models, is
the committed page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from dynadapter.bench.lab.results import render_markdown
from dynadapter.bench.lab.rows import AnswersRow, LoadRow, PrecisionRow, RatioCheck, TargetCheck
from dynadapter.bench.serving.rows import AdaptSection, AdaptStep
from dynadapter.bench.suite.rows import (
    AblationRow,
    Budget,
    CellTiming,
    DataRow,
    DataSection,
    FewshotRow,
    FewshotSection,
    ProbeRow,
    RecipeRow,
    RecipesPage,
    RecipesSection,
    RecordedConfig,
    SuiteResults,
    SuiteRow,
)
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
        (SuiteRow, RESULTS["rows"]),
        (ProbeRow, RESULTS["probe"]),
        (AblationRow, RESULTS["ablation"]),
        (
            RecordedConfig,
            [RESULTS["config"], RESULTS["fewshot"]["config"], *(s["config"] for s in RESULTS["recipes"]["sections"])],
        ),
        (CellTiming, list(RESULTS["timing"].values())),
        (Budget, [RESULTS["budget"]]),
        (FewshotRow, RESULTS["fewshot"]["rows"]),
        (RecipeRow, [row for section in RESULTS["recipes"]["sections"] for row in section["rows"]]),
        (DataRow, RESULTS["data"]["rows"]),
        (AdaptStep, [step for steps in RESULTS["adapt"]["ramp"]["steps"].values() for step in steps]),
        (AdaptStep, [step for phases in RESULTS["adapt"]["drift"]["phases"].values() for step in phases]),
    ],
)
def test_a_row_model_keeps_every_field_it_names(model: type[BaseModel], rows: list[dict]) -> None:
    """Every field a model names reads back as written (fields a row lacks stay unset, nested ones too)."""
    assert rows
    for row in rows:
        named = {name: row[name] for name in model.model_fields if name in row}
        assert model.model_validate(row).model_dump(exclude_unset=True) == named


@pytest.mark.parametrize(
    ("model", "section"),
    [
        (SuiteResults, RESULTS),
        (FewshotSection, RESULTS["fewshot"]),
        (RecipesPage, RESULTS["recipes"]),
        (RecipesSection, RESULTS["recipes"]["sections"][0]),
        (DataSection, RESULTS["data"]),
        (AdaptSection, RESULTS["adapt"]),
    ],
)
def test_every_section_reads_into_its_model(model: type[BaseModel], section: dict) -> None:
    read = model.model_validate(section)
    assert set(read.model_fields_set) == set(model.model_fields) & set(section)


def test_a_load_row_counts_the_answered_requests() -> None:
    row = LoadRow.model_validate(RESULTS["serve"]["results"][0])
    assert row.answered == RESULTS["serve"]["results"][0]["requests"] - RESULTS["serve"]["results"][0]["errors"]


def test_the_page_rendered_through_the_models_is_the_committed_page() -> None:
    assert render_markdown(RESULTS) == (DOCS / "results.md").read_text()
