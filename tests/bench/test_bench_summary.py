"""What the results page states, from known cell results: suite means, the target verdict, missing cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynadapter.bench.results import update_results
from dynadapter.bench.summary import render_markdown, result_table, sections

CONFIG = {
    "backbone": "builtin:dinov2-s14",
    "img_size": 112,
    "epochs": 1,
    "lr": 0.005,
    "warmup_epochs": 0.25,
    "batch_size": 32,
    "seed": 0,
}


def static(acc: float) -> dict:
    return {"acc": acc, "gflops": 1.0, "seconds": 10.0}


def dyn(balanced_acc: float, balanced_gflops: float, best_at_half: float = 0.5) -> dict:
    modes = {"fast": (balanced_acc - 0.1, 0.3), "balanced": (balanced_acc, balanced_gflops), "accurate": (0.9, 0.8)}
    return {
        "acc": 0.9,
        "seconds": 20.0,
        "reference_gflops": 1.0,
        "exit_accuracy": [0.6, 0.9],
        "sweep": [[0.3, 0.5], [0.5, best_at_half], [0.51, 0.99], [1.1, 0.9]],
        "modes": {m: {"acc": a, "gflops": g, "saved": 1.0 - g} for m, (a, g) in modes.items()},
    }


@pytest.fixture
def results() -> dict:
    lookup = {
        ("a", "adapter", "static"): static(0.90),
        ("a", "adapter", "dyn"): dyn(0.899, 0.40),
        ("b", "adapter", "static"): static(0.70),
        ("b", "adapter", "dyn"): dyn(0.699, 0.50),
        ("a", "lora", "static"): static(0.90),
        ("a", "lora", "dyn"): dyn(0.85, 0.60, best_at_half=0.86),
        ("b", "lora", "static"): static(0.80),
        ("b", "lora", "dyn"): None,
        ("a", "adapter", "linear-heads"): dyn(0.80, 0.45),
        ("b", "adapter", "linear-heads"): None,
    }
    return sections(lookup, ["a", "b"], ["adapter", "lora"], {"linear-heads": "balanced heads off"}, "adapter", CONFIG)


def test_suite_means_and_the_target(results: dict) -> None:
    means = {r["petl"]: r for r in results["rows"] if r["task"] == "mean"}
    assert means["adapter"]["tasks"] == 2
    assert means["adapter"]["static_acc"] == pytest.approx(0.80)
    assert means["adapter"]["dyn"]["balanced"] == pytest.approx({"acc": 0.799, "gflops": 0.45, "saved": 0.55})
    adapter, lora = results["target"]
    assert adapter["met"] and adapter["complete"] and adapter["acc_delta"] == pytest.approx(-0.001)
    # lora: only task "a" has both cells; 40% saved and 5 points lost there.
    assert lora["tasks"] == 1 and not lora["complete"] and lora["met"] is False
    assert lora["saved_short"] == pytest.approx(0.10) and lora["acc_short"] == pytest.approx(0.045)
    # The best threshold saving 50% (0.5 GFLOPs of 1.0, not the 0.51 one) is 4 points short too.
    assert lora["best_at_target"] == pytest.approx(0.86)
    assert lora["why"].startswith("the exits are not accurate enough: even the best threshold")
    assert "reaches only 86.0% (-4.00 points against static); accuracy per exit alone: 60.0 / 90.0%" in lora["why"]


def test_a_miss_the_model_could_meet_blames_the_calibration() -> None:
    lookup = {("a", "adapter", "static"): static(0.90), ("a", "adapter", "dyn"): dyn(0.80, 0.45, best_at_half=0.91)}
    (target,) = sections(lookup, ["a"], ["adapter"], {}, "adapter", CONFIG)["target"]
    assert target["met"] is False and target["best_at_target"] == pytest.approx(0.91)
    assert target["why"].startswith("the model can: the best threshold on the test split saving 50% reaches 91.0%")
    assert "gives 80.0%, 11.00 points below that best" in target["why"]


def test_missing_cells_and_ablation_are_marked(results: dict) -> None:
    assert results["missing"] == ["b/lora-dyn", "b/adapter-linear-heads"]
    lora_b = next(r for r in results["rows"] if (r["task"], r["petl"]) == ("b", "lora"))
    assert lora_b["static_acc"] == 0.80 and lora_b["dyn"] is None
    full, linear = results["ablation"]
    assert full["tasks"] == 2 and full["balanced"]["saved"] == pytest.approx(0.55)
    assert linear["tasks"] == 1 and linear["missing"] == ["b"] and linear["accurate"]["acc"] == 0.9


def test_markdown_states_the_verdict(results: dict) -> None:
    page = render_markdown(results)
    assert "| adapter | 80.0 | 79.9 | -0.10 | 55.0% | 50.0 | **met** |" in page
    assert "Why lora misses: the exits are not accurate enough" in page and "Why adapter" not in page
    assert (
        "missed: saves 10.0 points of FLOPs too few; accuracy 4.50 points below the 0.5-point margin "
        "(provisional: 1 of 2 tasks)"
    ) in page
    assert "| lora | 80.0 | 1 | missing | missing | missing |" in page and "`b/lora-dyn`" in page
    assert "| balanced heads off | 80.0 / 55% | 90.0 / 20% | 1 / 2 |" in page
    assert "| dynamic | 4 | 20 | 80 |" in page and "| static | 4 | 10 | 40 |" in page
    assert result_table(results).splitlines()[1].startswith("adapter")


def test_update_results_keeps_the_other_benchmarks_sections(tmp_path: Path, results: dict) -> None:
    # "notes": a section no benchmark module owns, shown as JSON after the accuracy part.
    (tmp_path / "results.json").write_text(json.dumps({"notes": {"machine": "2 cores"}, "rows": []}))
    update_results(tmp_path, results)
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["notes"] == {"machine": "2 cores"} and merged["rows"] == results["rows"]
    page = (tmp_path / "results.md").read_text()
    assert page.index("## Target") < page.index("## Notes") < page.index('"machine": "2 cores"')
