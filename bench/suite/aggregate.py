"""From the cells' results to the accuracy sections of docs/results.json (``sections``); their targets are
judged in ``suite.targets`` and rendered by ``suite.page``.

Pure Python on purpose: the page is re-rendered from the JSON alone (``results.update_results``),
also by benchmarks that run where torch is not installed.

The paper's claim is the target: at ``balanced``, at least half the FLOPs saved with a mean
accuracy within 0.5 points of the static baseline of the same PETL method. "Saved" is relative to
that static baseline, so the early heads' own cost counts against Dyn-Adapter.

Each cell runs once per seed; its numbers here are the mean over the seeds that finished
(``combine``), with the sample standard deviation beside the accuracies, and the target is judged
on those means. Every accuracy is given on the clean test split and on its shifted copy
(corrupted images, ``dynadapter.training.corruptions``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from statistics import fmean, stdev
from typing import Any

from dynadapter.bench.suite.rows import (
    CellResult,
    CellSpread,
    CombinedCell,
    ModeResult,
    ProbeRow,
    SuiteRow,
    ValMode,
)
from dynadapter.bench.suite.targets import (
    best_at_target,
    budget,
    exit_target,
    int8_target,
    shift_target,
    target,
)

MODES = ("fast", "balanced", "accurate")
#: (task, petl, variant, seed) -> a cell's result, None where it has not finished
RunResults = dict[tuple[str, str, str, int], "dict[str, Any] | None"]
#: The same, each result read into its model
CellResults = dict[tuple[str, str, str, int], "CellResult | None"]


def _tree(values: Sequence[Any], reduce: Callable[[list[float]], float | None]) -> Any:
    """``reduce`` over the seeds at every number of equally shaped results (lists element-wise);
    anything else is taken from the first."""
    first = values[0]
    if isinstance(first, dict):
        return {k: _tree([v[k] for v in values], reduce) for k in first if all(k in v for v in values)}
    if isinstance(first, list) and all(isinstance(v, list) and len(v) == len(first) for v in values):
        return [_tree(list(column), reduce) for column in zip(*values, strict=True)]
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return reduce([float(v) for v in values])
    return first


def combine(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One cell over its seeds: the mean of every number, ``seeds`` (how many finished) and ``std``
    (the same tree of sample standard deviations; None with a single seed). A tree, as the figures read
    it; ``CombinedCell`` models what the page reads of it."""
    mean = _tree(results, fmean)
    mean["seeds"] = len(results)
    mean["std"] = _tree(results, lambda xs: stdev(xs) if len(xs) > 1 else None)
    if "probe" in mean:  # every seed has its probe: the mean of the blocks is no block, keep each
        seeds = [CellResult.model_validate(r).probe for r in results]
        mean["probe"]["blocks"] = [p.block for p in seeds if p is not None]
    return mean


def by_cell(runs: RunResults) -> dict[tuple[str, str, str], dict[str, Any] | None]:
    """``(task, petl, variant) -> combine`` of its finished seeds (None when no seed has finished)."""
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for (task, petl, variant, _), result in runs.items():
        grouped.setdefault((task, petl, variant), []).extend([result] if result is not None else [])
    return {key: combine(found) if found else None for key, found in grouped.items()}


#: A mode a result does not have: every number None.
_ABSENT = ModeResult(acc=None)


def _at(modes: Mapping[str, ModeResult], name: str) -> ModeResult:
    """``modes[name]``, or ``_ABSENT`` (an unfinished cell, one seed's std, a cell from before the part)."""
    return modes.get(name, _ABSENT)


def _point(mode: ModeResult) -> dict[str, float | None]:
    """A mode's test accuracy, GFLOPs and FLOPs saved, as the rows write them."""
    return {"acc": mode.acc, "gflops": mode.gflops, "saved": mode.saved}


def cell_row(task: str, petl: str, static: CombinedCell | None, dyn: CombinedCell | None) -> dict[str, Any]:
    """One (task, method) row; None marks a cell that has not finished."""
    static_std, dyn_std = (c.std if c else CellSpread() for c in (static, dyn))
    dyn_int8_std = dyn_std.int8.modes if dyn_std.int8 else {}
    return {
        "task": task,
        "petl": petl,
        "seeds": {"static": static.seeds if static else None, "dyn": dyn.seeds if dyn else None},
        "static_acc": static.acc if static else None,
        "static_acc_std": static_std.acc,
        "static_shifted_acc": static.shifted.acc if static else None,
        "static_shifted_acc_std": static_std.shifted.acc,
        "static_gflops": static.gflops if static else None,
        "dyn": {m: _point(dyn.modes[m]) for m in MODES} if dyn else None,
        "dyn_acc_std": {m: _at(dyn_std.modes, m).acc for m in MODES},
        "dyn_shifted": {m: _shifted_point(dyn.shifted.modes.get(m)) for m in MODES} if dyn else None,
        "dyn_shifted_acc_std": {m: _at(dyn_std.shifted.modes, m).acc for m in MODES},
        "dyn_shifted_full_acc": dyn.shifted.acc if dyn else None,
        "dyn_shifted_exit_acc": dyn.shifted.exit_accuracy if dyn else None,
        "dyn_int8": _int8_modes(dyn),
        "dyn_int8_acc_std": {m: _at(dyn_int8_std, m).acc for m in MODES},
        "int8_refused": _int8_refused(dyn),
        "int8_agreement": dyn.int8.argmax_agreement if dyn and dyn.int8 else None,
        "dyn_val": {m: _at(dyn.val_modes, m).acc for m in MODES} if dyn else None,
        "dyn_val_acc_std": {m: _at(dyn_std.val_modes, m).acc for m in MODES},
        "balanced_threshold": _at(dyn.modes, "balanced").threshold if dyn else None,
        "balanced_threshold_std": _at(dyn_std.modes, "balanced").threshold,
        "balanced_interval": _interval(dyn.val_modes.get("balanced") if dyn else None),
        "dyn_full_acc": dyn.acc if dyn else None,
        "dyn_exit_acc": dyn.exit_accuracy if dyn else None,
        "dyn_best_at_target": best_at_target(dyn) if dyn else None,
        "seconds": {"static": static.seconds if static else None, "dyn": dyn.seconds if dyn else None},
    }


def _shifted_point(mode: ModeResult | None) -> dict[str, float | None] | None:
    """A mode's accuracy and GFLOPs on the shifted split (None where the cell has no shifted modes)."""
    return None if mode is None else {"acc": mode.acc, "gflops": mode.gflops}


def _int8_modes(dyn: CombinedCell | None) -> dict[str, dict[str, float | None]] | None:
    """Each mode's test accuracy, GFLOPs and FLOPs saved served in int8 at int8's own thresholds
    (``int8_column``); None where the cell has no int8 numbers."""
    if dyn is None or dyn.int8 is None or not dyn.int8.modes:
        return None
    return {m: _point(dyn.int8.modes[m]) for m in MODES}


def _int8_refused(dyn: CombinedCell | None) -> bool | None:
    """Whether ``dynadapter export`` would refuse the int8 segments: their last exit's validation
    accuracy drop (mean over the seeds) beyond the export's bound; None without int8 numbers."""
    int8 = dyn.int8 if dyn else None
    if int8 is None or int8.val_acc_drop is None or int8.allowed_drop is None:
        return None
    return int8.val_acc_drop > int8.allowed_drop


def _interval(val_mode: ValMode | None) -> list[float] | None:
    """The bootstrap 5th-95th percentile of a mode's threshold (the mean over seeds of each end; None
    where a seed was calibrated without bootstrap or a cell predates it)."""
    return val_mode.interval() if val_mode is not None else None


def probe_row(task: str, probe: CombinedCell | None) -> dict[str, Any]:
    """The frozen probe of a task at its block chosen on validation (None marks an unfinished cell)."""
    mean = probe.probe if probe else None
    spread = probe.std.probe if probe else None
    return {
        "task": task,
        "seeds": probe.seeds if probe else None,
        "blocks": mean.blocks if mean else None,
        "acc": mean.acc if mean else None,
        "shifted_acc": mean.shifted_acc if mean else None,
        "val_acc": mean.val_acc if mean else None,
        "gflops": mean.gflops if mean else None,
        "acc_std": spread.acc if spread else None,
        "shifted_acc_std": spread.shifted_acc if spread else None,
    }


def probe_mean(rows: Sequence[ProbeRow]) -> dict[str, Any]:
    """The frozen probe's suite mean over the tasks where it finished."""
    done = [r for r in rows if r.acc is not None]
    columns: dict[str, Callable[[ProbeRow], float | None]] = {
        "acc": lambda r: r.acc,
        "shifted_acc": lambda r: r.shifted_acc,
        "val_acc": lambda r: r.val_acc,
        "gflops": lambda r: r.gflops,
    }
    return {
        "task": "mean",
        "tasks": len(done),
        **{k: fmean(_numbers(column(r) for r in done)) if done else None for k, column in columns.items()},
    }


def _numbers(values: Iterable[float | None]) -> list[float]:
    """``values``, each a number: a row the mean covers has them all (ValueError otherwise)."""
    out = list(values)
    if any(v is None for v in out):
        raise ValueError("a finished row without one of the numbers its mean covers")
    return [v for v in out if v is not None]


def mean_row(petl: str, rows: Sequence[SuiteRow]) -> dict[str, Any]:
    """The suite mean of a method over the tasks where both its cells finished."""
    done = [r for r in rows if r.static_acc is not None and r.dyn is not None]
    row: dict[str, Any] = {
        "task": "mean",
        "petl": petl,
        "tasks": len(done),
        "static_acc": None,
        "static_gflops": None,
        "dyn": None,
        "dyn_full_acc": None,
        "dyn_exit_acc": None,
        "dyn_shifted_exit_acc": None,
        "dyn_best_at_target": None,
        "static_shifted_acc": None,
        "dyn_shifted": None,
        "dyn_int8": None,
    }
    if done:
        best = [r.dyn_best_at_target for r in done]
        shifted = [r for r in done if r.static_shifted_acc is not None and (r.dyn_shifted or {}).get("balanced")]
        all_shifted = len(shifted) == len(done)
        row.update(
            static_shifted_acc=fmean(_numbers(r.static_shifted_acc for r in done)) if all_shifted else None,
            dyn_shifted={m: _shifted_mean([(r.dyn_shifted or {}).get(m) for r in done]) for m in MODES}
            if all_shifted
            else None,
            dyn_int8=_mode_means([r.dyn_int8 or {} for r in done]) if all(r.dyn_int8 for r in done) else None,
            static_acc=fmean(_numbers(r.static_acc for r in done)),
            static_gflops=fmean(_numbers(r.static_gflops for r in done)),
            dyn_full_acc=fmean(_numbers(r.dyn_full_acc for r in done)),
            dyn_exit_acc=[fmean(accs) for accs in zip(*(r.dyn_exit_acc or [] for r in done), strict=True)],
            dyn_shifted_exit_acc=[fmean(a) for a in zip(*(r.dyn_shifted_exit_acc or [] for r in done), strict=True)]
            if all(r.dyn_shifted_exit_acc for r in done)
            else None,
            dyn_best_at_target=fmean(_numbers(best)) if None not in best else None,
            dyn=_mode_means([r.dyn or {} for r in done]),
        )
    return row


def _shifted_mean(modes: Sequence[ModeResult | None]) -> dict[str, float]:
    """A mode's accuracy and GFLOPs on the shifted split, averaged over the rows."""
    present = [m or _ABSENT for m in modes]
    return {
        "acc": fmean(_numbers(m.acc for m in present)),
        "gflops": fmean(_numbers(m.gflops for m in present)),
    }


def _mode_means(rows: Sequence[Mapping[str, ModeResult]]) -> dict[str, dict[str, float]]:
    """Each mode's accuracy, GFLOPs and FLOPs saved, averaged over ``rows`` (each a row's modes by name)."""
    return {
        m: {
            "acc": fmean(_numbers(r[m].acc for r in rows)),
            "gflops": fmean(_numbers(r[m].gflops for r in rows)),
            "saved": fmean(_numbers(r[m].saved for r in rows)),
        }
        for m in MODES
    }


def seed_deltas(runs: CellResults, petl: str, tasks: Sequence[str]) -> dict[int, float]:
    """seed -> that seed's suite-mean accuracy difference, ``balanced`` minus static, for every seed
    whose static and Dyn-Adapter cells finished on every task: the target's spread over seeds."""
    seeds = sorted({seed for (_, p, _, seed) in runs if p == petl})
    deltas = {}
    for seed in seeds:
        cells = [(runs.get((t, petl, "static", seed)), runs.get((t, petl, "dyn", seed))) for t in tasks]
        done = [(static, dyn) for static, dyn in cells if static is not None and dyn is not None]
        if len(done) == len(tasks):
            deltas[seed] = fmean(_numbers(_difference(dyn.balanced().acc, static.acc) for static, dyn in done))
    return deltas


def _difference(a: float | None, b: float | None) -> float | None:
    """``a - b``; None where either is absent."""
    return None if a is None or b is None else a - b


def int8_seed_deltas(runs: CellResults, petl: str, tasks: Sequence[str]) -> dict[str, list[float]]:
    """task -> each seed's int8 ``balanced`` test accuracy minus fp32 ``balanced``'s (seeds in order,
    those whose Dyn-Adapter cell has int8 numbers): the spread the int8 bound stands against."""
    out: dict[str, list[float]] = {}
    for (task, p, variant, _), result in sorted(runs.items(), key=lambda kv: kv[0][3]):
        if result is None or result.int8 is None or p != petl or variant != "dyn" or task not in tasks:
            continue
        delta = _difference(_at(result.int8.modes, "balanced").acc, result.balanced().acc)
        if delta is not None:
            out.setdefault(task, []).append(delta)
    return out


def ablation_row(
    variant: str, label: str, per_task: dict[str, CombinedCell | None], seeds: Sequence[int]
) -> dict[str, Any]:
    """One ablation variant's suite mean at ``balanced`` and ``accurate`` over the tasks it finished
    (each task: the mean over ``seeds``)."""
    done = {t: r for t, r in per_task.items() if r is not None}
    modes = {
        m: {
            "acc": fmean(_numbers(r.modes[m].acc for r in done.values())),
            "saved": fmean(_numbers(r.modes[m].saved for r in done.values())),
        }
        if done
        else None
        for m in ("balanced", "accurate")
    }
    return {
        "variant": variant,
        "label": label,
        "tasks": len(done),
        "missing": sorted(set(per_task) - set(done)),
        "seeds": list(seeds),
        **modes,
        "per_task": {
            t: {m: {"acc": r.modes[m].acc, "saved": r.modes[m].saved} for m in ("balanced", "accurate")}
            for t, r in done.items()
        },
    }


def sections(
    runs: RunResults,
    tasks: Sequence[str],
    methods: Sequence[str],
    ablations: dict[str, str],
    ablation_petl: str,
    config: dict[str, Any],
    probe: tuple[str, str] = ("none", "probe"),
    suite_plan: dict[str, int] | None = None,
    ablation_seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The accuracy sections of results.json from ``(task, petl, variant, seed) -> result or None``;
    ``probe``: the (petl, variant) of the frozen-probe cells; ``suite_plan``: cells of each kind
    ("probe", "static", "dynamic") in the whole default suite, which ``budget`` projects;
    ``ablation_seeds``: the seeds the ablation compares over (default: every seed in ``runs``), its
    "every part on" row included, so that each variant faces the same seeds."""
    cells = {key: CellResult.model_validate(r) if r is not None else None for key, r in runs.items()}
    lookup = {key: CombinedCell.model_validate(c) if c else None for key, c in by_cell(runs).items()}
    probes = [probe_row(t, lookup.get((t, *probe))) for t in tasks]
    by_method = {
        petl: [cell_row(t, petl, lookup.get((t, petl, "static")), lookup.get((t, petl, "dyn"))) for t in tasks]
        for petl in methods
    }
    rows = [row for per_task in by_method.values() for row in per_task]
    means = {
        petl: mean_row(petl, [SuiteRow.model_validate(r) for r in per_task]) for petl, per_task in by_method.items()
    }
    labels = {"dyn": "Dyn-Adapter, every part on", **ablations}
    seeds = sorted({key[3] for key in runs}) if ablation_seeds is None else list(ablation_seeds)
    at_seeds = by_cell({key: r for key, r in runs.items() if key[3] in seeds})
    per_variant = {
        v: {t: CombinedCell.model_validate(c) if (c := at_seeds.get((t, ablation_petl, v))) else None for t in tasks}
        for v in labels
    }
    ablation = [ablation_row(v, label, per_variant[v], seeds) for v, label in labels.items()]
    # An ablation nobody asked for (no cell of it finished) is not "unfinished": the page says it was not run.
    ablation_run = any(cell is not None for v in ablations for cell in per_variant[v].values())
    missing = [
        f"{t}/{p}-{v}" + (f"-seed{s}" if s else "")
        for (t, p, v, s), r in runs.items()
        if r is None and (ablation_run or v not in ablations)
    ]
    times = timing(cells)
    return {
        "config": config,
        "tasks": list(tasks),
        "methods": list(methods),
        "rows": rows + list(means.values()),
        "probe": [*probes, probe_mean([ProbeRow.model_validate(p) for p in probes])],
        "target": [target(m, len(tasks), seed_deltas(cells, petl, tasks)) for petl, m in means.items()],
        "shift_target": [
            shift_target(m, probes, len(tasks), by_method[petl]) for petl, m in means.items() if petl != probe[0]
        ],
        "exit_target": [
            exit_target(petl, by_method[petl], {t: lookup.get((t, *probe)) for t in tasks})
            for petl in methods
            if petl != probe[0]
        ],
        "int8_target": [int8_target(petl, by_method[petl], int8_seed_deltas(cells, petl, tasks)) for petl in methods],
        "ablation": ablation,
        "missing": missing,
        "timing": times,
        "budget": budget(times, suite_plan or {}),
        "devices": devices(cells),
    }


def timing(runs: CellResults) -> dict[str, Any]:
    """Wall-clock seconds per finished cell (training, calibration, evaluation on the test split and,
    for cells finished since 2026-12-01, its shifted copy, and the int8 column where there is one), by
    variant (the frozen probe apart): the default suite's cells only, whose mean times ``budget`` projects
    (an ablation cell may have run on a busier machine, or with another thread count)."""
    kinds = {"static": "static", "probe": "probe", "dyn": "dynamic"}
    seconds: dict[str, list[float]] = {}
    for (_, _, variant, _), r in runs.items():
        if r is not None and variant in kinds:
            seconds.setdefault(kinds[variant], []).append(r.cell_seconds())
    return {kind: {"cells": len(s), "mean_s": fmean(s), "total_s": sum(s)} for kind, s in seconds.items()}


def devices(runs: CellResults) -> dict[str, int]:
    """Finished cells per device they trained on (``cells.cell_device``: a GPU's or CPU's name)."""
    return dict(Counter(r.device for r in runs.values() if r is not None and r.device is not None))
