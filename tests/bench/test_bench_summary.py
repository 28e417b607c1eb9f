"""What the results page states, from known cell results: suite means, the target verdict, missing cells."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean

import pytest

from dynadapter.bench.lab.results import render_markdown as render_page
from dynadapter.bench.lab.results import update_results
from dynadapter.bench.suite.aggregate import MODES, sections
from dynadapter.bench.suite.page import RESULT_KEYS, render_markdown, result_table
from dynadapter.bench.suite.targets import why_int8_missed

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
    runs = {(*key, 0): result for key, result in lookup.items()}
    return sections(runs, ["a", "b"], ["adapter", "lora"], {"linear-heads": "balanced heads off"}, "adapter", CONFIG)


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
    lookup = {
        ("a", "adapter", "static", 0): static(0.90),
        ("a", "adapter", "dyn", 0): dyn(0.80, 0.45, best_at_half=0.91),
    }
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


def test_an_ablation_not_run_is_said_so_not_listed_as_unfinished() -> None:
    runs = {
        ("a", "adapter", "static", 0): static(0.9),
        ("a", "adapter", "dyn", 0): dyn(0.9, 0.4),
        ("a", "adapter", "linear-heads", 0): None,
        ("a", "lora", "dyn", 0): None,
    }
    results = sections(runs, ["a"], ["adapter", "lora"], {"linear-heads": "balanced heads off"}, "adapter", CONFIG)
    assert results["missing"] == ["a/lora-dyn"]
    page = render_markdown(results)
    assert "Not run for this page: `dynadapter bench accuracy --ablation` trains its cells." in page
    assert "linear-heads" not in page


def test_markdown_states_the_verdict(results: dict) -> None:
    page = render_markdown(results)
    assert "| adapter | 80.0 | 79.9 | -0.10 | 1 | 55.0% | 50.0 | **met** |" in page
    assert "Why lora misses: the exits are not accurate enough" in page and "Why adapter" not in page
    assert (
        "missed: saves 10.0 points of FLOPs too few; accuracy 4.50 points below the 0.5-point margin "
        "(provisional: 1 of 2 tasks)"
    ) in page
    assert "| lora | 80.0 | — | 1 | missing | missing | missing | missing |" in page and "`b/lora-dyn`" in page
    assert "| balanced heads off | 80.0 / 55% | 90.0 / 20% | 1 / 2 |" in page
    # the default suite's cells only: the ablation's linear-heads cell is apart from "dynamic"
    assert "| dynamic | 3 | 20 | 60 |" in page and "| static | 4 | 10 | 40 |" in page
    assert result_table(results).splitlines()[1].startswith("adapter")


def test_update_results_keeps_the_other_benchmarks_sections(tmp_path: Path, results: dict) -> None:
    # "notes": a section no benchmark module owns, shown as JSON after the accuracy part.
    (tmp_path / "results.json").write_text(json.dumps({"notes": {"machine": "2 cores"}, "rows": []}))
    update_results(tmp_path, results)
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["notes"] == {"machine": "2 cores"} and merged["rows"] == results["rows"]
    page = (tmp_path / "results.md").read_text()
    assert page.index("## Target") < page.index("## Notes") < page.index('"machine": "2 cores"')


def test_every_section_the_suite_writes_is_rendered_by_the_suites_page(results: dict) -> None:
    # a key the aggregate writes but the page does not own would be dumped on the page as raw JSON
    assert set(results) <= set(RESULT_KEYS)
    assert "```json" not in render_page(results)


def with_shifted(result: dict, shifted_acc: float) -> dict:
    """A cell result with its shifted-split numbers (as cells.summarize_shifted writes them)."""
    shifted = {"acc": shifted_acc, "exit_accuracy": [shifted_acc]}
    if "modes" in result:
        shifted["modes"] = {m: {"acc": shifted_acc, "gflops": v["gflops"]} for m, v in result["modes"].items()}
    return {**result, "shifted": shifted}


def probe(acc: float, block: int, gflops: float) -> dict:
    return {
        **static(acc),
        "shifted": {"acc": acc - 0.2, "exit_accuracy": [acc - 0.2]},
        "probe": {"block": block, "val_acc": acc, "acc": acc, "shifted_acc": acc - 0.2, "gflops": gflops},
    }


@pytest.fixture
def seeded() -> dict:
    """Three seeds of one task: static 0.80 / 0.84 / 0.82, balanced 0.79 / 0.81 / 0.83; seed 2's probe missing."""
    runs = {
        **{
            ("a", "adapter", "static", s): with_shifted(static(acc), acc - 0.1)
            for s, acc in enumerate((0.8, 0.84, 0.82))
        },
        **{
            ("a", "adapter", "dyn", s): with_shifted(dyn(acc, 0.4), acc - 0.3)
            for s, acc in enumerate((0.79, 0.81, 0.83))
        },
        ("a", "none", "probe", 0): probe(0.70, 3, 0.25),
        ("a", "none", "probe", 1): probe(0.74, 4, 0.30),
        ("a", "none", "probe", 2): None,
    }
    return sections(runs, ["a"], ["adapter"], {}, "adapter", {**CONFIG, "seeds": [0, 1, 2]})


def test_seeds_give_mean_and_sample_std(seeded: dict) -> None:
    row = next(r for r in seeded["rows"] if r["task"] == "a")
    assert row["seeds"] == {"static": 3, "dyn": 3}
    assert row["static_acc"] == pytest.approx(0.82) and row["static_acc_std"] == pytest.approx(0.02)
    assert row["dyn"]["balanced"]["acc"] == pytest.approx(0.81)
    assert row["dyn_acc_std"]["balanced"] == pytest.approx(0.02)
    assert row["static_shifted_acc"] == pytest.approx(0.72) and row["static_shifted_acc_std"] == pytest.approx(0.02)
    assert row["dyn_shifted"]["balanced"]["acc"] == pytest.approx(0.51)
    # The target is judged on the means: balanced 0.81 against static 0.82 is more than 0.5 points below.
    [target] = seeded["target"]
    assert target["acc_delta"] == pytest.approx(-0.01) and target["met"] is False


def test_the_targets_spread_is_each_complete_seeds_suite_mean() -> None:
    """Two tasks; adapter: seed 0 Δ -0.2 and -0.4 points (mean -0.3), seed 1 -0.6 and -0.8 (-0.7),
    seed 2 has only task a; lora: seed 0 alone."""
    runs = {
        **{(t, "adapter", "static", s): static(0.9) for t in "ab" for s in (0, 1, 2)},
        ("a", "adapter", "dyn", 0): dyn(0.898, 0.4),
        ("b", "adapter", "dyn", 0): dyn(0.896, 0.4),
        ("a", "adapter", "dyn", 1): dyn(0.894, 0.4),
        ("b", "adapter", "dyn", 1): dyn(0.892, 0.4),
        ("a", "adapter", "dyn", 2): dyn(0.890, 0.4),
        ("b", "adapter", "dyn", 2): None,
        **{(t, "lora", v, 0): static(0.9) if v == "static" else dyn(0.9, 0.4) for t in "ab" for v in ("static", "dyn")},
        **{(t, "lora", v, 1): None for t in "ab" for v in ("static", "dyn")},
    }
    results = sections(runs, ["a", "b"], ["adapter", "lora"], {}, "adapter", {**CONFIG, "seeds": [0, 1, 2]})
    adapter, lora = results["target"]
    assert adapter["seed_deltas"] == {"0": pytest.approx(-0.003), "1": pytest.approx(-0.007)}
    assert adapter["acc_delta_std"] == pytest.approx(0.004 / 2**0.5)
    # the verdict is on the means over whatever seeds finished: task a over 3 seeds, b over 2
    assert adapter["acc_delta"] == pytest.approx(fmean([0.894 - 0.9, 0.894 - 0.9]))
    assert lora["seed_deltas"] == {"0": pytest.approx(0.0)} and lora["acc_delta_std"] is None
    page = render_markdown(results)
    assert "| adapter | 90.0 | 89.4 | -0.60 ± 0.28 | 2 | 60.0% |" in page
    assert "| lora | 90.0 | 90.0 | +0.00 | 1 | 60.0% |" in page
    # rows whose means cover fewer seeds than asked say so; adapter on task a has all three
    task_b = page[page.index("### b") : page.index("### Suite mean")]
    assert (
        "| adapter (static 3, Dyn-Adapter 2 of 3 seeds) | 90.0 ± 0.0 |" in task_b
        and "| lora (1 of 3 seeds) |" in task_b
    )
    task_a = page[page.index("### a") : page.index("### b")]
    assert "| adapter | 90.0 ± 0.0 |" in task_a


def test_probe_row_over_the_seeds_that_finished(seeded: dict) -> None:
    probe_row, mean = seeded["probe"]
    assert probe_row["seeds"] == 2 and probe_row["blocks"] == [3, 4]
    assert probe_row["acc"] == pytest.approx(0.72) and probe_row["shifted_acc"] == pytest.approx(0.52)
    assert probe_row["gflops"] == pytest.approx(0.275) and probe_row["acc_std"] == pytest.approx(0.0283, abs=1e-4)
    assert mean["task"] == "mean" and mean["tasks"] == 1 and mean["acc"] == pytest.approx(0.72)
    assert seeded["missing"] == ["a/none-probe-seed2"]


def test_page_reports_mean_std_shifted_and_probe(seeded: dict) -> None:
    page = render_markdown(seeded)
    assert "seeds 0, 1, 2: mean ± std" in page
    line = next(x for x in page.splitlines() if x.startswith("| adapter | 82.0 ±"))  # the task table
    # static 82.0 ± 2.0, shifted 72.0 ± 2.0; balanced 81.0 ± 2.0 at 0.4 GFLOPs, shifted 51.0 ± 2.0
    assert (
        "| 82.0 ± 2.0 | 72.0 ± 2.0 | 1 |" in line
        and "81.0 ± 2.0 / 0.4 / 60%" in line
        and line.endswith("51.0 ± 2.0 | — |")  # no int8 numbers in these cells
    )
    assert "| frozen probe (block 3/4) | 72.0 ± 2.8 | 52.0 ± 2.8 | 0.275 |" in page


def test_shift_target_is_judged_on_the_suite_means(seeded: dict) -> None:
    """balanced shifted 0.51 against the probe's 0.52 (seeds 0 and 1: 0.50, 0.54); balanced loses 0.30
    from clean to shifted where static loses 0.10."""
    [t] = seeded["shift_target"]
    assert t["dyn_shifted"] == pytest.approx(0.51) and t["probe_shifted"] == pytest.approx(0.52)
    assert t["over_probe"] == pytest.approx(-0.01) and t["extra_loss"] == pytest.approx(0.20)
    assert t["met"] is False
    page = render_markdown(seeded)
    assert "## Target: shifted test data" in page and "| adapter | 51.0 | 52.0 | -1.00 | +20.00 | missed |" in page


def test_shift_target_met_and_not_judged_before_the_probe() -> None:
    runs = {
        ("a", "adapter", "static", 0): with_shifted(static(0.9), 0.8),
        ("a", "adapter", "dyn", 0): with_shifted(dyn(0.9, 0.4), 0.795),
        ("a", "none", "probe", 0): probe(0.97, 6, 0.7),  # shifted 0.77
    }
    [t] = sections(runs, ["a"], ["adapter"], {}, "adapter", CONFIG)["shift_target"]
    assert t["over_probe"] == pytest.approx(0.025) and t["extra_loss"] == pytest.approx(0.005) and t["met"] is True
    runs["a", "none", "probe", 0] = None
    results = sections(runs, ["a"], ["adapter"], {}, "adapter", CONFIG)
    assert results["shift_target"] == [{"petl": "adapter", "met": None}]
    assert "## Target: shifted test data" not in render_markdown(results)


def shifted_dyn(balanced_acc: float, last_exit: float, exits: list[float], balanced_gflops: float) -> dict:
    """A Dyn-Adapter cell (``dyn(0.89, 0.4)``: last exit 0.9, exits 0.6 / 0.9) with shifted numbers of
    its own per exit and at ``balanced``."""
    result = dyn(0.89, 0.4)
    modes = {m: {"acc": balanced_acc, "gflops": balanced_gflops} for m in MODES}
    return {**result, "shifted": {"acc": last_exit, "exit_accuracy": exits, "modes": modes}}


def test_a_missed_shift_target_is_split_into_the_models_and_early_exitings_part() -> None:
    """Task a: static 0.90 -> 0.80 (loses 0.10); Dyn-Adapter's last exit 0.90 -> 0.78 (0.12: the
    model's +0.02), balanced 0.89 -> 0.70, 0.01 behind the last exit clean and 0.08 shifted (early
    exiting's +0.07): +0.09 in all. Task b: balanced loses exactly what static does."""
    runs = {
        ("a", "adapter", "static", 0): with_shifted(static(0.9), 0.8),
        ("a", "adapter", "dyn", 0): shifted_dyn(0.70, 0.78, [0.4, 0.78], 0.55),
        ("b", "adapter", "static", 0): with_shifted(static(0.9), 0.8),
        ("b", "adapter", "dyn", 0): shifted_dyn(0.79, 0.80, [0.6, 0.8], 0.45),
        **{(t, "none", "probe", 0): probe(0.7, 6, 0.5) for t in "ab"},
    }
    results = sections(runs, ["a", "b"], ["adapter"], {}, "adapter", CONFIG)
    [t] = results["shift_target"]
    assert t["extra_loss"] == pytest.approx(0.045) and t["met"] is False
    a, b = t["per_task"]["a"], t["per_task"]["b"]
    assert a == {"extra_loss": pytest.approx(0.09), "model": pytest.approx(0.02), "early_exit": pytest.approx(0.07)}
    assert b == {"extra_loss": pytest.approx(0.0), "model": pytest.approx(0.0), "early_exit": pytest.approx(0.0)}
    page = render_markdown(results)
    why = next(line for line in page.splitlines() if line.startswith("Why adapter misses: a carries"))
    assert "+9.00 points (the other tasks +0.00 to +0.00)" in why
    assert "+2.00 are the model's" in why and "+7.00 are leaving early" in why
    assert "spends 55% of the static FLOPs on them against 40%" in why
    assert why.endswith("clean → shifted (%): 60.0 → 40.0 / 90.0 → 78.0. Leaving early costs most: the early exits "
                        "lose more to the corruptions than the last one, and thresholds calibrated on clean "
                        "validation images still let shifted images out there.")  # fmt: skip


def one_task_shift_target(dyn_result: dict) -> dict:
    """The shifted target of one task: static 0.90 -> 0.80, the probe 0.50 on shifted, ``dyn_result``."""
    runs = {
        ("a", "adapter", "static", 0): with_shifted(static(0.9), 0.8),
        ("a", "adapter", "dyn", 0): dyn_result,
        ("a", "none", "probe", 0): probe(0.7, 6, 0.5),
    }
    [t] = sections(runs, ["a"], ["adapter"], {}, "adapter", CONFIG)["shift_target"]
    return t


def test_a_shift_miss_of_the_model_itself_blames_the_model() -> None:
    """The last exit loses 0.20 where static loses 0.10; balanced stays 0.01 behind it on both splits."""
    t = one_task_shift_target(shifted_dyn(0.69, 0.70, [0.5, 0.7], 0.45))
    assert t["per_task"]["a"] == {
        "extra_loss": pytest.approx(0.1),
        "model": pytest.approx(0.1),
        "early_exit": pytest.approx(0.0, abs=1e-12),
    }
    assert t["why"].endswith("The model costs most: its last exit is less robust to the corruptions than static.")


def test_a_met_shift_target_has_no_why() -> None:
    t = one_task_shift_target(shifted_dyn(0.79, 0.80, [0.6, 0.8], 0.45))
    assert t["met"] is True and t["why"] == ""


def test_int8_column_over_the_seeds() -> None:
    def with_int8(result: dict, acc: float, drop: float) -> dict:
        modes = {m: {**v, "acc": acc} for m, v in result["modes"].items()}
        int8 = {"modes": modes, "fp32_openvino": result["modes"], "val_acc_drop": drop, "allowed_drop": 0.01}
        int8["argmax_agreement"] = [1.0, 1.0 - drop]
        return {**result, "int8": {**int8, "accepted": drop <= 0.01, "seconds": 5.0}}

    runs = {
        **{("a", "adapter", "static", s): static(0.9) for s in (0, 1)},
        ("a", "adapter", "dyn", 0): with_int8(dyn(0.80, 0.4), 0.79, 0.0),
        ("a", "adapter", "dyn", 1): with_int8(dyn(0.84, 0.4), 0.81, 0.03),
    }
    results = sections(runs, ["a"], ["adapter"], {}, "adapter", CONFIG)
    row, mean = results["rows"]
    assert row["dyn_int8"]["balanced"]["acc"] == pytest.approx(0.80) and row["dyn_int8_acc_std"]["balanced"] > 0
    assert mean["dyn_int8"]["balanced"]["acc"] == pytest.approx(0.80)
    # 80.0 ± 1.4 in int8 against fp32's 82.0: -2.0 points; validation drop 1.5 points on average, over
    # the export's 1-point bound
    assert row["int8_refused"] is True
    assert "| 80.0 ± 1.4 (-2.0; export would refuse) |" in render_markdown(results)
    # Issue 18's bound: -2.0 points is more than 0.3 below fp32.
    [t] = results["int8_target"]
    assert t["deltas"] == {"a": pytest.approx(-0.02)} and t["met"] is False and t["tasks"] == 1
    page = render_markdown(results)
    # per-exit agreement, mean over the seeds: [1.0, 1.0] and [1.0, 0.97]
    assert "## Target: int8 accuracy" in page and "| adapter | -2.00 | a -2.0 | 1.000 / 0.985 | missed |" in page
    # Why: each seed's difference (0.79 - 0.80, 0.81 - 0.84) and the last exit's agreement
    assert t["seed_deltas"] == {"a": [pytest.approx(-0.01), pytest.approx(-0.03)]}
    assert (
        "Why adapter misses: a -2.0 points at 60.0% of FLOPs saved against fp32's 60.0% (seeds -1.0 / -3.0; "
        "std 1.4; last-exit agreement 0.985). The seeds' differences on a spread at least as wide as the 0.3-point "
        "bound: the miss is within the noise of one calibration. Quantization changes most last-exit answers on a "
        "(agreement 0.985)." in page
    )
    # The int8 column's time counts in the cell's: 20 s + 5 s, each seed.
    assert results["timing"]["dynamic"] == {"cells": 2, "mean_s": 25.0, "total_s": 50.0}


def test_an_int8_miss_steady_over_seeds_is_not_called_noise() -> None:
    """Task a misses by 0.5 points on both seeds (std 0: no noise to hide in); task b, within the
    bound, has the lower last-exit agreement."""
    row = {"dyn": {"balanced": {"saved": 0.5}}, "dyn_int8": {"balanced": {"saved": 0.55}}}
    rows = [{**row, "task": "a", "int8_agreement": [1.0, 0.99]}, {**row, "task": "b", "int8_agreement": [1.0, 0.95]}]
    why = why_int8_missed({"a": -0.005, "b": 0.0}, {"a": [-0.005, -0.005], "b": [0.0, 0.0]}, rows)
    assert why == (
        "a -0.5 points at 55.0% of FLOPs saved against fp32's 50.0% (seeds -0.5 / -0.5; std 0.0; last-exit "
        "agreement 0.990). Quantization changes most last-exit answers on b (agreement 0.950)."
    )


def with_val(result: dict, val_acc: float, threshold: float, interval: tuple[float, float] | None) -> dict:
    """A dynamic cell's result with its modes' validation numbers (as cells.val_modes writes them):
    every mode at ``val_acc`` on validation; ``balanced`` at ``threshold`` (test and val alike)."""
    spread = {"threshold_low": interval[0], "threshold_high": interval[1]} if interval else {}
    modes = {m: {**v, "threshold": threshold} for m, v in result["modes"].items()}
    val = {m: {"acc": val_acc, "threshold": threshold, **spread} for m in modes}
    return {**result, "modes": modes, "val_modes": val}


def test_calibration_section_sets_val_beside_test_and_the_thresholds_seed_spread() -> None:
    runs = {
        # task a: three seeds, balanced at 0.70 / 0.80 / 0.90 (std 0.1), val 0.90 / 0.92 / 0.94 against
        # test 0.79 / 0.81 / 0.83; bootstrap intervals [0.6, 0.8], [0.7, 0.9], [0.8, 1.0]
        **{
            ("a", "adapter", "dyn", s): with_val(dyn(test, 0.4), val, t, (t - 0.1, t + 0.1))
            for s, (test, val, t) in enumerate([(0.79, 0.90, 0.7), (0.81, 0.92, 0.8), (0.83, 0.94, 0.9)])
        },
        ("a", "adapter", "static", 0): static(0.8),
        # task b: a cell cached before val_modes existed
        ("b", "adapter", "dyn", 0): dyn(0.70, 0.4),
        ("b", "adapter", "static", 0): static(0.7),
    }
    results = sections(runs, ["a", "b"], ["adapter"], {}, "adapter", {**CONFIG, "seeds": [0, 1, 2]})
    a, b = (next(r for r in results["rows"] if r["task"] == t) for t in ("a", "b"))
    assert a["dyn_val"]["balanced"] == pytest.approx(0.92) and a["dyn_val_acc_std"]["balanced"] == pytest.approx(0.02)
    assert a["balanced_threshold"] == pytest.approx(0.8) and a["balanced_threshold_std"] == pytest.approx(0.1)
    assert a["balanced_interval"] == pytest.approx([0.7, 0.9])
    assert b["dyn_val"] == {m: None for m in ("fast", "balanced", "accurate")} and b["balanced_interval"] is None
    page = render_markdown(results)
    section = page[page.index("## Calibration: validation against test") :]
    lines = [x for x in section.splitlines() if x.startswith("| a |") or x.startswith("| b |")]
    # fast: val 92.0 / test 71.0 (balanced - 0.1); balanced 92.0 / 81.0; accurate 92.0 / 90.0
    assert lines[0] == "| a | adapter | 92.0 / 71.0 | 92.0 / 81.0 | 92.0 / 90.0 | 0.800 ± 0.100 | 0.700–0.900 |"
    assert lines[1] == "| b | adapter | — / 60.0 | — / 70.0 | — / 90.0 | — | — |"


def test_a_seed_without_a_bootstrap_interval_leaves_the_interval_out() -> None:
    runs = {
        ("a", "adapter", "dyn", 0): with_val(dyn(0.8, 0.4), 0.9, 0.7, (0.6, 0.8)),
        ("a", "adapter", "dyn", 1): with_val(dyn(0.8, 0.4), 0.9, 0.7, None),  # calibrated with 0 resamples
    }
    results = sections(runs, ["a"], ["adapter"], {}, "adapter", {**CONFIG, "seeds": [0, 1]})
    row = next(r for r in results["rows"] if r["task"] == "a")
    assert row["balanced_interval"] is None and row["dyn_val"]["balanced"] == pytest.approx(0.9)
    assert "| a | adapter | 90.0 / 70.0 | 90.0 / 80.0 | 90.0 / 90.0 | 0.700 ± 0.000 | — |" in render_markdown(results)


def test_the_whole_suites_time_is_projected_from_each_kinds_mean_against_the_budget() -> None:
    timed = {
        ("a", "none", "probe", 0): {**probe(0.7, 3, 0.25), "seconds": 100.0},
        ("a", "adapter", "static", 0): {**static(0.9), "seconds": 300.0},
        ("a", "adapter", "dyn", 0): {**dyn(0.9, 0.4), "seconds": 500.0},
        ("a", "adapter", "dyn", 1): {**dyn(0.9, 0.4), "seconds": 700.0},
    }
    plan = {"probe": 12, "static": 36, "dynamic": 36}
    results = sections(timed, ["a"], ["adapter"], {}, "adapter", CONFIG, suite_plan=plan)
    # 12 x 100 s + 36 x 300 s + 36 x 600 s (the dynamic cells' mean) = 33600 s = 9.33 h
    assert results["budget"] == {"plan": plan, "projected_s": 33600.0, "bound_s": 4 * 3600, "met": False}
    page = render_markdown(results)
    assert "(12 probe, 36 static, 36 dynamic cells)" in page
    assert "trained in float32 (no bfloat16 autocast): **9.3 h** against a budget of 4 h: missed by 5.3 h" in page
    assert "a step runs 2.3x faster: bfloat16 autocast on a CPU with bfloat16 instructions, or a GPU" in page
    # a fifth of the plan fits in 4 hours; with bfloat16 already on, only the GPU is left to suggest
    small = sections(
        timed,
        ["a"],
        ["adapter"],
        {},
        "adapter",
        {**CONFIG, "amp": "bfloat16"},
        suite_plan={k: n // 5 for k, n in plan.items()},
    )
    assert small["budget"]["met"] is True and "in bfloat16 autocast: **1.8 h** against a budget of 4 h: **met**." in (
        render_markdown(small)
    )
    # nothing is projected before every kind of cell has one finished, nor without a plan
    no_probe = {k: v for k, v in timed.items() if k[1] != "none"}
    assert sections(no_probe, ["a"], ["adapter"], {}, "adapter", CONFIG, suite_plan=plan)["budget"] is None
    assert sections(timed, ["a"], ["adapter"], {}, "adapter", CONFIG)["budget"] is None


def probe_per_block(clean: list[float], shifted: list[float]) -> dict:
    """A frozen probe with a head after every block (``clean`` / ``shifted``: each block's test accuracy)."""
    return {
        **probe(clean[-1], len(clean), 1.0),
        "exit_accuracy": clean,
        "shifted": {"acc": shifted[-1], "exit_accuracy": shifted},
    }


def exits_judged(shifted_exits: list[float]) -> tuple[dict, str]:
    """Dyn-Adapter with two exits (after blocks 2 and 4 of a 4-block backbone: ``default_exits``) at 0.75 /
    0.90 on clean test images and ``shifted_exits`` on shifted ones, against a probe of 0.5 / 0.7 / 0.8 / 0.85
    (clean) and 0.3 / 0.5 / 0.6 / 0.65 (shifted) after blocks 1-4."""
    result = {**dyn(0.9, 0.4), "exit_accuracy": [0.75, 0.9]}
    runs = {
        ("a", "adapter", "static", 0): with_shifted(static(0.9), 0.8),
        ("a", "adapter", "dyn", 0): {**with_shifted(result, shifted_exits[-1]), "shifted": {
            "acc": shifted_exits[-1], "exit_accuracy": shifted_exits,
            "modes": {m: {"acc": 0.7, "gflops": 0.4} for m in MODES}}},
        ("a", "none", "probe", 0): probe_per_block([0.5, 0.7, 0.8, 0.85], [0.3, 0.5, 0.6, 0.65]),
    }  # fmt: skip
    results = sections(runs, ["a"], ["adapter"], {}, "adapter", CONFIG)
    [t] = results["exit_target"]
    return t, render_markdown(results)


def test_every_exit_is_judged_against_the_probe_at_its_block() -> None:
    t, page = exits_judged([0.45, 0.7])  # block 2 shifted: 0.45 against the probe's 0.50
    assert t["blocks"] == [2, 4] and t["probe"] == [0.7, 0.85] and t["probe_shifted"] == [0.5, 0.65]
    assert t["dyn"] == [0.75, 0.9] and t["dyn_shifted"] == [0.45, 0.7] and t["met"] is False
    assert (
        t["why"]
        == "below the probe at their block, shifted: block 2 -5.00 points (at block 2, a is furthest below: -5.00)."
    )
    assert "## Target: every exit at least the frozen probe at its block" in page
    assert "| adapter | clean | 75.0 / 70.0 (+5.0) | 90.0 / 85.0 (+5.0) | missed |" in page
    assert "| adapter | shifted | 45.0 / 50.0 (-5.0) | 70.0 / 65.0 (+5.0) | missed |" in page


def test_exits_at_or_above_the_probe_meet_the_floor() -> None:
    t, page = exits_judged([0.5, 0.7])  # block 2 shifted: equal to the probe
    assert t["met"] is True and t["why"] == ""
    assert "| adapter | shifted | 50.0 / 50.0 (+0.0) | 70.0 / 65.0 (+5.0) | **met** |" in page


def test_the_exit_floor_waits_for_the_probes_heads_after_every_block() -> None:
    runs = {
        ("a", "adapter", "static", 0): with_shifted(static(0.9), 0.8),
        ("a", "adapter", "dyn", 0): with_shifted(dyn(0.9, 0.4), 0.7),
        ("a", "none", "probe", 0): probe(0.7, 6, 0.5),  # a record without its per-block accuracies
    }
    results = sections(runs, ["a"], ["adapter"], {}, "adapter", CONFIG)
    assert results["exit_target"] == [{"petl": "adapter", "met": None}]
    assert "every exit at least the frozen probe" not in render_markdown(results)
