"""The accuracy suite's part of the results page: markdown (and the terminal table of ``bench accuracy``)
rendered from the sections ``suite.aggregate`` wrote into results.json, and only from them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from dynadapter.bench.lab.results import markdown_table, pct
from dynadapter.bench.suite.aggregate import MODES
from dynadapter.bench.suite.rows import (
    AblationRow,
    Budget,
    ModeResult,
    ProbeRow,
    RecordedConfig,
    SuiteResults,
    SuiteRow,
)
from dynadapter.bench.suite.targets import (
    INT8_MAX_TEST_DROP,
    SHIFT_EXTRA_LOSS,
    SHIFT_MARGIN_OVER_PROBE,
    TARGET_ACC_DROP,
    TARGET_SAVED,
    ClaimVerdict,
    Verdict,
)

#: top-level keys of results.json that this module writes and renders
RESULT_KEYS = (
    "config",
    "tasks",
    "methods",
    "rows",
    "probe",
    "target",
    "shift_target",
    "exit_target",
    "int8_target",
    "ablation",
    "missing",
    "timing",
    "budget",
    "devices",
)


def _pm(x: float | None, std: float | None) -> str:
    """An accuracy in percent, ± its standard deviation over seeds where there are several."""
    return pct(x) + (f" ± {pct(std)}" if x is not None and std is not None else "")


def _mode_cells(row: SuiteRow) -> list[str]:
    dyn, std = row.dyn, row.dyn_acc_std or {}
    if dyn is None:
        return ["missing"] * 3
    return [f"{_pm(dyn[m].acc, std.get(m))} / {dyn[m].gflops:.3g} / {pct(dyn[m].saved, 0)}%" for m in MODES]


def _seeds_short(row: SuiteRow, planned: int) -> str:
    """A label such as ``(1 of 3 seeds)`` where a row's mean covers fewer seeds than the run asked for,
    so that a mean over one seed is not read as one over three; empty where every seed finished."""
    counts = {k: n for k, n in (row.seeds or {}).items() if n is not None}
    if not counts or min(counts.values()) >= planned:
        return ""
    if len(set(counts.values())) == 1:
        return f" ({min(counts.values())} of {planned} seeds)"
    names = {"static": "static", "dyn": "Dyn-Adapter"}
    return " (" + ", ".join(f"{names[kind]} {n}" for kind, n in counts.items()) + f" of {planned} seeds)"


def _shifted_cell(row: SuiteRow) -> str:
    shifted = (row.dyn_shifted or {}).get("balanced")
    if row.dyn is None or not shifted:
        return "missing" if row.dyn is None else "—"
    return _pm(shifted.acc, (row.dyn_shifted_acc_std or {}).get("balanced"))


def _int8_cell(row: SuiteRow) -> str:
    """``balanced`` served in int8: accuracy (± std) and its difference from fp32's, in points."""
    int8 = row.dyn_int8
    if row.dyn is None:
        return "missing"
    if not int8:
        return "—"
    delta = 100 * (_acc(int8["balanced"]) - _acc(row.dyn["balanced"]))
    refused = "; export would refuse" if row.int8_refused else ""
    acc = _pm(int8["balanced"].acc, (row.dyn_int8_acc_std or {}).get("balanced"))
    return f"{acc} ({delta:+.1f}{refused})"


def _acc(mode: ModeResult) -> float:
    """A mode's accuracy where the page computes with it (a finished mode always has one)."""
    if mode.acc is None:
        raise ValueError("a finished mode without an accuracy")
    return mode.acc


def _verdict(t: ClaimVerdict) -> str:
    if t.met is None:
        return "no finished task yet"
    partial = "" if t.complete else f" (provisional: {t.tasks} of {t.of} tasks)"
    if t.met:
        return "**met**" + partial
    misses = []
    if t.saved_short:
        misses.append(f"saves {pct(t.saved_short)} points of FLOPs too few")
    if t.acc_short:
        misses.append(f"accuracy {pct(t.acc_short, 2)} points below the 0.5-point margin")
    return "missed: " + "; ".join(misses) + partial


def _delta_cell(t: ClaimVerdict) -> str:
    """The target's accuracy difference in points, ± its standard deviation over seeds where known."""
    if t.met is None or t.acc_delta is None:
        return "—"
    std = t.acc_delta_std
    return f"{100 * t.acc_delta:+.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def render_target(results: SuiteResults) -> str:
    verdicts, means = results.target, results.means()
    lines = [
        [
            t.petl,
            pct(means[t.petl].static_acc),
            pct(_balanced(means[t.petl]).acc) if t.met is not None else "—",
            _delta_cell(t),
            str(len(t.seed_deltas)),
            f"{pct(t.saved)}%" if t.met is not None else "—",
            pct(t.best_at_target) if t.best_at_target is not None else "—",
            _verdict(t),
        ]
        for t in verdicts
    ]
    return (
        "## Target: the paper's claim at `balanced`\n\n"
        f"At least {TARGET_SAVED:.0%} of the static baseline's FLOPs saved, with the suite-mean accuracy "
        "(the mean over tasks of the means over seeds) "
        f"within {100 * TARGET_ACC_DROP:.1f} points of the static baseline of the same PETL method "
        "(`none`: the linear probe on the frozen backbone). Δ acc: ± the standard deviation, over the seeds "
        "whose cells all finished, of each seed's own suite-mean Δ: the noise the verdict stands against.\n\n"
        + markdown_table(
            [
                "PETL",
                "static acc (%)",
                "balanced acc (%)",
                "Δ acc (points)",
                "seeds with every cell",
                "FLOPs saved",
                f"best on test at {TARGET_SAVED:.0%} saved (%)",
                "target",
            ],
            lines,
        )
        + _why_lines(verdicts)
    )


def _balanced(row: SuiteRow) -> ModeResult:
    """A judged method's ``balanced`` suite mean (a verdict is only reached where it exists)."""
    if row.dyn is None:
        raise ValueError(f"{row.petl}: a judged target without a Dyn-Adapter mean")
    return row.dyn["balanced"]


def render_exit_target(results: SuiteResults) -> str:
    """Issue 34's floor: each exit against the frozen probe's head after the same block (empty before judged)."""
    judged = [t for t in results.exit_target if t.met is not None]
    if not judged:
        return ""
    blocks = judged[0].blocks
    lines = [
        [
            t.petl,
            split,
            *(f"{pct(d)} / {pct(p)} ({100 * (d - p):+.1f})" for d, p in zip(dyn, probe, strict=True)),
            "**met**" if t.met else "missed",
        ]
        for t in judged
        for split, dyn, probe in (("clean", t.dyn, t.probe), ("shifted", t.dyn_shifted, t.probe_shifted))
    ]
    return (
        "## Target: every exit at least the frozen probe at its block\n\n"
        "Suite means of each exit's test accuracy (every image answered there), Dyn-Adapter / the frozen probe's "
        "linear head after the same block (logistic regression on the frozen features), on the clean test split "
        "and its shifted copy; in brackets the difference in points. An exit below the probe has learnt less "
        "from its training than a linear read-out of the frozen features holds; its head, rather than its "
        "features, may be what falls short (`dynadapter train --head-init standardised`, and its recipes under "
        '"Training recipes").\n\n'
        + markdown_table(["PETL", "split", *(f"block {b}" for b in blocks), "target"], lines)
        + _why_lines(judged)
    )


def render_shift_target(results: SuiteResults) -> str:
    """Issue 19's shifted-split targets, one line per method (empty before any is judged)."""
    judged = [t for t in results.shift_target if t.met is not None]
    if not judged:
        return ""
    lines = [
        [
            t.petl,
            pct(t.dyn_shifted),
            pct(t.probe_shifted),
            f"{100 * t.over_probe:+.2f}",
            f"{100 * t.extra_loss:+.2f}",
            "**met**" if t.met else "missed",
        ]
        for t in judged
    ]
    return (
        "## Target: shifted test data\n\n"
        f"Suite means at `balanced` on the shifted split: Dyn-Adapter at least {100 * SHIFT_MARGIN_OVER_PROBE:.0f} "
        "points above the frozen probe (at its block best on validation), and losing at most "
        f"{100 * SHIFT_EXTRA_LOSS:.0f} point more from clean to shifted than the static baseline of the same "
        "method loses.\n\n"
        + markdown_table(
            [
                "PETL",
                "balanced shifted (%)",
                "frozen probe shifted (%)",
                "over the probe (points)",
                "extra clean-to-shifted loss (points)",
                "target",
            ],
            lines,
        )
        + _why_lines(judged)
    )


def render_int8_target(results: SuiteResults) -> str:
    """Issue 18's int8 accuracy bound, one line per method with int8 numbers (empty without any)."""
    judged = [t for t in results.int8_target if t.met is not None]
    if not judged:
        return ""
    lines = [
        [
            t.petl,
            f"{100 * t.mean_delta:+.2f}",
            ", ".join(f"{task} {100 * d:+.1f}" for task, d in t.deltas.items()),
            " / ".join(f"{a:.3f}" for a in t.agreement) if t.agreement else "—",
            "**met**" if t.met else "missed",
        ]
        for t in judged
    ]
    return (
        "## Target: int8 accuracy\n\n"
        f"On every task, int8 `balanced` (its own thresholds) at most {100 * INT8_MAX_TEST_DROP:.1f} points below "
        "fp32 `balanced` on the test split. Argmax agreement: how often each exit's int8 answer equals "
        "PyTorch's on the validation split, mean over the tasks; an exit well below 1 is where quantization "
        "changes answers.\n\n"
        + markdown_table(
            ["PETL", "mean Δ (points)", "Δ per task (points)", "argmax agreement per exit", "target"], lines
        )
        + _why_lines(judged)
    )


def _why_lines(targets: Iterable[Verdict]) -> str:
    """A paragraph per missed target that says why (``why`` of ``target``, ``shift_target``, ``int8_target``)."""
    return "".join(f"\n\nWhy {t.petl} misses: {t.why}" for t in targets if t.why)


def _probe_line(p: ProbeRow) -> list[str]:
    """The frozen probe as a row of a task's table (block(s) chosen on validation, one per seed)."""
    where = f"block {'/'.join(map(str, p.blocks))}" if p.blocks else f"{p.tasks} tasks"
    if p.acc is None:
        return ["frozen probe", "missing", "missing", *["—"] * 6]
    return [
        f"frozen probe ({where})",
        _pm(p.acc, p.acc_std),
        _pm(p.shifted_acc, p.shifted_acc_std),
        f"{p.gflops:.3g}",
        *["—"] * 5,
    ]


def render_tasks(results: SuiteResults) -> str:
    parts = [
        "## Per task\n\nEach mode cell: test accuracy (%) / mean GFLOPs per image / FLOPs saved against "
        "the static baseline; accuracies are means over the seeds ± their standard deviation. `static`: the "
        "same PETL method with the final head only. `shifted`: the same test images, each corrupted once "
        "(`dynadapter.training.corruptions`: translation, scale, rotation, blur, noise, contrast, JPEG at "
        "severities 1-5, each kind and severity an equal share of the images), with the thresholds "
        "calibrated on the clean validation split. `frozen probe`: a linear head on the frozen backbone "
        "at the block that is best on the validation split, fitted by logistic regression with its L2 "
        "strength chosen on validation (its GFLOPs: the blocks up to it and the head). "
        "`balanced int8`: the Dyn-Adapter cell exported in int8 (`dynadapter export --precision int8`: NNCF "
        "post-training quantization, OpenVINO) and served by the service's OpenVINO segment runner at int8's "
        "own `balanced` threshold, calibrated on int8's validation logits; in brackets its difference from "
        'fp32 `balanced`, in points, and "export would refuse" where int8 loses more last-exit validation '
        "accuracy than `dynadapter export` allows; — where the cell was not exported (`--no-int8`)."
    ]
    probes = {p.task: p for p in results.probe}
    planned = len(results.config.seed_list)
    header = [
        "PETL",
        "static acc (%)",
        "static shifted (%)",
        "static GFLOPs",
        *MODES,
        "balanced shifted (%)",
        "balanced int8 (%)",
    ]
    for task in [*results.tasks, "mean"]:
        rows = [r for r in results.rows if r.task == task]
        title = f"### {task}" if task != "mean" else "### Suite mean (over the tasks where both cells finished)"
        lines = [
            [
                r.petl + (f" ({r.tasks} tasks)" if task == "mean" else _seeds_short(r, planned)),
                _pm(r.static_acc, r.static_acc_std) if r.static_acc is not None else "missing",
                _pm(r.static_shifted_acc, r.static_shifted_acc_std),
                f"{r.static_gflops:.3g}" if r.static_gflops is not None else "—",
                *_mode_cells(r),
                _shifted_cell(r),
                _int8_cell(r),
            ]
            for r in rows
        ]
        if task in probes:
            lines.append(_probe_line(probes[task]))
        drawn = task != "mean" and any(r.static_acc is not None or r.dyn is not None for r in rows)
        figure = f"\n\n![{task}: accuracy against GFLOPs](results/{task}.png)" if drawn else ""
        parts.append(f"{title}\n\n" + markdown_table(header, lines) + figure)
    return "\n\n".join(parts)


def _threshold_cells(row: SuiteRow) -> list[str]:
    """``balanced``'s threshold, mean ± std over seeds, and its bootstrap interval (mean over seeds)."""
    t, std, interval = row.balanced_threshold, row.balanced_threshold_std, row.balanced_interval
    mean = "—" if t is None else f"{t:.3f}" + (f" ± {std:.3f}" if std is not None else "")
    return [mean, "—" if not interval else f"{interval[0]:.3f}–{interval[1]:.3f}"]


def calibration_lines(rows: Sequence[SuiteRow]) -> list[list[str]]:
    """Per task and method: each mode's accuracy on validation and on test, side by side, and the
    spread of ``balanced``'s threshold; "—" where a cell has no validation numbers (cached before)."""
    lines = []
    for r in rows:
        if r.task == "mean" or r.dyn is None:
            continue
        val = r.dyn_val or {}
        pairs = [f"{pct(val.get(m))} / {pct(r.dyn[m].acc)}" for m in MODES]
        lines.append([r.task, r.petl, *pairs, *_threshold_cells(r)])
    return lines


def render_calibration(results: SuiteResults) -> str:
    """Whether the thresholds chosen on the validation split carry over to the test split (issue #19)."""
    return (
        "## Calibration: validation against test\n\n"
        "Each mode cell: accuracy (%) on the validation split, where its threshold was chosen, / on the "
        "test split (means over the seeds). A validation accuracy well above the test one means the "
        "threshold was fitted to the validation images. `balanced` threshold: mean ± std over the seeds; "
        "bootstrap: the 5th-95th percentile of the choices over 200 resamples of the validation split "
        "(`dynadapter train --calibration-resamples`), mean over the seeds; — where a cell has no such "
        "number (calibrated or cached before it existed).\n\n"
        + markdown_table(
            ["task", "PETL", *(f"{m} val / test" for m in MODES), "balanced threshold", "bootstrap 5-95%"],
            calibration_lines(results.rows),
        )
    )


def render_ablation(results: SuiteResults) -> str:
    def cells(row: AblationRow) -> list[str]:
        modes = [row.mode(m) for m in ("balanced", "accurate")]
        return [f"{pct(m.acc)} / {pct(m.saved, 0)}%" if m else "missing" for m in modes]

    heading = "## Ablation (Dyn-Adapter with adapter, suite mean)\n\n"
    if not any(r.tasks for r in results.ablation[1:]):
        return heading + "Not run for this page: `dynadapter bench accuracy --ablation` trains its cells."
    lines = [[r.label, *cells(r), f"{r.tasks} / {r.tasks + len(r.missing)}"] for r in results.ablation]
    seeds = results.ablation[0].seeds
    distill = any(r.variant == "distill" for r in results.ablation)
    over = (
        f", each task the mean over seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}" if seeds else ""
    )
    return (
        heading + "One part of the method switched at a time (`dynadapter bench accuracy --ablation`); each cell: "
        f"test accuracy (%) / FLOPs saved{over}; a row with fewer tasks finished is the mean over those alone."
        + (" Self-distillation is off by default, so its row switches it on." if distill else "")
        + "\n\n"
        + markdown_table(["variant", "balanced", "accurate", "tasks finished"], lines)
    )


def render_markdown(sections: dict[str, Any]) -> str:
    """The accuracy part of docs/results.md (empty when results.json has none)."""
    if "rows" not in sections:
        return ""
    results = SuiteResults.model_validate(sections)
    c = results.config
    epochs = f"{c.epochs} epoch" + ("s" if c.epochs != 1 else "")
    amp = f"{c.amp} autocast in training, " if c.amp else ""
    recipe = ", ".join(f"{k}={v}" for k, v in c.recipe.items())
    recipe = f"recipe {recipe}, " if recipe else ""
    intro = (
        f"Backbone `{c.backbone}` at {c.img_size} px, frozen; {epochs} per cell "
        f"(AdamW lr {c.lr}, {c.warmup_epochs} epochs of warm-up, batch {c.batch_size}, "
        f"{amp}{recipe}{_seeds(c)}). Tasks: {', '.join(results.tasks)} (`builtin:<task>`, at most 800 train / "
        "200 val images, a separate test split). All numbers are on the test split; the modes use the "
        "thresholds calibrated on the validation split (each run's calibration.json). GFLOPs: one "
        "multiply-add = one FLOP. The paper trains 100 epochs: with fewer, these numbers compare the "
        "methods under one short budget, in which the early exits have learnt least."
    )
    parts = [
        intro,
        render_target(results),
        render_shift_target(results),
        render_exit_target(results),
        render_int8_target(results),
        render_tasks(results),
    ]
    parts = [part for part in parts if part]
    if calibration_lines(results.rows):
        parts.append(render_calibration(results))
    if any(r.tasks for r in results.ablation):
        parts.append(render_ablation(results))
    if results.timing:
        parts.append(
            "## Time per cell\n\nWall-clock seconds of training, calibration, test evaluation and the int8 column, "
            f"as measured on the machine that ran the cell{_devices(results.devices)}:\n\n"
            + markdown_table(
                ["cells", "finished", "mean (s)", "total (s)"],
                [[kind, str(t.cells), f"{t.mean_s:.0f}", f"{t.total_s:.0f}"] for kind, t in results.timing.items()],
            )
        )
        if results.budget:
            parts.append(render_budget(results.budget, c))
    if results.missing:
        parts.append("## Cells not finished\n\n" + ", ".join(f"`{m}`" for m in results.missing))
    return "\n\n".join(parts)


def render_budget(b: Budget, config: RecordedConfig) -> str:
    """The suite's projected wall-clock time against the 4-hour budget, with what set it."""
    cells = ", ".join(f"{n} {kind}" for kind, n in b.plan.items())
    precision = f"{config.amp} autocast" if config.amp else "float32 (no bfloat16 autocast)"
    hours, bound = b.projected_s / 3600, b.bound_s / 3600
    faster = ("bfloat16 autocast on a CPU with bfloat16 instructions, or " if not config.amp else "") + (
        "a GPU (`--device cuda`)"
    )
    verdict = (
        "**met**"
        if b.met
        else f"missed by {hours - bound:.1f} h ({hours / bound:.1f}x the budget). A cell's time is its training "
        f"steps, compute-bound: the suite fits where a step runs {hours / bound:.1f}x faster: {faster}"
    )
    return (
        f"Whole default suite ({cells} cells) at these means, trained in {precision}: "
        f"**{hours:.1f} h** against a budget of {bound:.0f} h: {verdict}."
    )


def _devices(counts: dict[str, int] | None) -> str:
    if not counts:
        return ""
    return " (trained on " + "; ".join(f"{name}: {n} cell{'s' if n != 1 else ''}" for name, n in counts.items()) + ")"


def _seeds(config: RecordedConfig) -> str:
    seeds = config.seed_list
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}: mean ± std"


def result_table(sections: dict[str, Any]) -> str:
    """The plain-text table ``dynadapter bench accuracy`` prints: suite means and the target."""
    results = SuiteResults.model_validate(sections)
    means = results.means()
    lines = [f"{'PETL':<11} {'tasks':>5} {'static':>7} {'fast':>14} {'balanced':>14} {'accurate':>14}  target"]
    for t in results.target:
        row = means[t.petl]
        dyn = row.dyn or {}
        modes = [f"{pct(dyn[m].acc)}%/{pct(dyn[m].saved, 0)}%" if row.dyn else "—" for m in MODES]
        lines.append(
            f"{t.petl:<11} {row.tasks:>5} {pct(row.static_acc):>7} "
            + " ".join(f"{m:>14}" for m in modes)
            + "  "
            + _verdict(t).replace("**", "")
        )
    return "\n".join(lines)
