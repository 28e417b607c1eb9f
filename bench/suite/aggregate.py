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
(corrupted images, ``dynadapter.bench.lab.corruptions``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from statistics import fmean, stdev
from typing import Any

from dynadapter.bench.suite.targets import (
    best_at_target,
    budget,
    int8_target,
    shift_target,
    target,
)

MODES = ("fast", "balanced", "accurate")
#: (task, petl, variant, seed) -> a cell's result, None where it has not finished
RunResults = dict[tuple[str, str, str, int], "dict[str, Any] | None"]


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
    (the same tree of sample standard deviations; None with a single seed)."""
    mean = _tree(results, fmean)
    mean["seeds"] = len(results)
    mean["std"] = _tree(results, lambda xs: stdev(xs) if len(xs) > 1 else None)
    if "probe" in mean:
        mean["probe"]["blocks"] = [r["probe"]["block"] for r in results]
    return mean


def by_cell(runs: RunResults) -> dict[tuple[str, str, str], dict[str, Any] | None]:
    """``(task, petl, variant) -> combine`` of its finished seeds (None when no seed has finished)."""
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for (task, petl, variant, _), result in runs.items():
        grouped.setdefault((task, petl, variant), []).extend([result] if result is not None else [])
    return {key: combine(found) if found else None for key, found in grouped.items()}


def _get(result: dict | None, *path: str) -> Any:
    """``result[path[0]][path[1]]...``, None where a part is absent (an unfinished cell, one seed's std)."""
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def cell_row(task: str, petl: str, static: dict | None, dyn: dict | None) -> dict[str, Any]:
    """One (task, method) row; None marks a cell that has not finished."""
    return {
        "task": task,
        "petl": petl,
        "seeds": {"static": _get(static, "seeds"), "dyn": _get(dyn, "seeds")},
        "static_acc": static["acc"] if static else None,
        "static_acc_std": _get(static, "std", "acc"),
        "static_shifted_acc": _get(static, "shifted", "acc"),
        "static_shifted_acc_std": _get(static, "std", "shifted", "acc"),
        "static_gflops": static["gflops"] if static else None,
        "dyn": {m: {k: dyn["modes"][m][k] for k in ("acc", "gflops", "saved")} for m in MODES} if dyn else None,
        "dyn_acc_std": {m: _get(dyn, "std", "modes", m, "acc") for m in MODES},
        "dyn_shifted": {m: _get(dyn, "shifted", "modes", m) for m in MODES} if dyn else None,
        "dyn_shifted_acc_std": {m: _get(dyn, "std", "shifted", "modes", m, "acc") for m in MODES},
        "dyn_shifted_full_acc": _get(dyn, "shifted", "acc"),
        "dyn_shifted_exit_acc": _get(dyn, "shifted", "exit_accuracy"),
        "dyn_int8": _int8_modes(dyn),
        "dyn_int8_acc_std": {m: _get(dyn, "std", "int8", "modes", m, "acc") for m in MODES},
        "int8_refused": _int8_refused(dyn),
        "int8_agreement": _get(dyn, "int8", "argmax_agreement"),
        "dyn_val": {m: _get(dyn, "val_modes", m, "acc") for m in MODES} if dyn else None,
        "dyn_val_acc_std": {m: _get(dyn, "std", "val_modes", m, "acc") for m in MODES},
        "balanced_threshold": _get(dyn, "modes", "balanced", "threshold"),
        "balanced_threshold_std": _get(dyn, "std", "modes", "balanced", "threshold"),
        "balanced_interval": _interval(_get(dyn, "val_modes", "balanced")),
        "dyn_full_acc": dyn["acc"] if dyn else None,
        "dyn_exit_acc": dyn["exit_accuracy"] if dyn else None,
        "dyn_best_at_target": best_at_target(dyn) if dyn else None,
        "seconds": {"static": static["seconds"] if static else None, "dyn": dyn["seconds"] if dyn else None},
    }


def _int8_modes(dyn: dict | None) -> dict[str, dict[str, float]] | None:
    """Each mode's test accuracy, GFLOPs and FLOPs saved served in int8 at int8's own thresholds
    (``int8_column``); None where the cell has no int8 numbers."""
    modes = _get(dyn, "int8", "modes")
    return {m: {k: modes[m][k] for k in ("acc", "gflops", "saved")} for m in MODES} if modes else None


def _int8_refused(dyn: dict | None) -> bool | None:
    """Whether ``dynadapter export`` would refuse the int8 segments: their last exit's validation
    accuracy drop (mean over the seeds) beyond the export's bound; None without int8 numbers."""
    drop, allowed = _get(dyn, "int8", "val_acc_drop"), _get(dyn, "int8", "allowed_drop")
    return None if drop is None or allowed is None else drop > allowed


def _interval(val_mode: dict[str, Any] | None) -> list[float] | None:
    """The bootstrap 5th-95th percentile of a mode's threshold (the mean over seeds of each end; None
    where a seed was calibrated without bootstrap or a cell predates it)."""
    if val_mode is None or "threshold_low" not in val_mode or "threshold_high" not in val_mode:
        return None
    return [val_mode["threshold_low"], val_mode["threshold_high"]]


def probe_row(task: str, probe: dict | None) -> dict[str, Any]:
    """The frozen probe of a task at its block chosen on validation (None marks an unfinished cell)."""
    keys = ("acc", "shifted_acc", "val_acc", "gflops")
    return {
        "task": task,
        "seeds": _get(probe, "seeds"),
        "blocks": _get(probe, "probe", "blocks"),
        **{k: _get(probe, "probe", k) for k in keys},
        **{f"{k}_std": _get(probe, "std", "probe", k) for k in ("acc", "shifted_acc")},
    }


def probe_mean(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in rows if r["acc"] is not None]
    keys = ("acc", "shifted_acc", "val_acc", "gflops")
    return {
        "task": "mean",
        "tasks": len(done),
        **{k: fmean(r[k] for r in done) if done else None for k in keys},
    }


def mean_row(petl: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The suite mean of a method over the tasks where both its cells finished."""
    done = [r for r in rows if r["static_acc"] is not None and r["dyn"] is not None]
    row: dict[str, Any] = {
        "task": "mean",
        "petl": petl,
        "tasks": len(done),
        "static_acc": None,
        "static_gflops": None,
        "dyn": None,
        "dyn_full_acc": None,
        "dyn_exit_acc": None,
        "dyn_best_at_target": None,
        "static_shifted_acc": None,
        "dyn_shifted": None,
        "dyn_int8": None,
    }
    if done:
        best = [r["dyn_best_at_target"] for r in done]
        shifted = [r for r in done if r["static_shifted_acc"] is not None and r["dyn_shifted"]["balanced"]]
        row.update(
            static_shifted_acc=fmean(r["static_shifted_acc"] for r in shifted) if len(shifted) == len(done) else None,
            dyn_shifted={m: {k: fmean(r["dyn_shifted"][m][k] for r in done) for k in ("acc", "gflops")} for m in MODES}
            if len(shifted) == len(done)
            else None,
            dyn_int8=_mode_means(done, "dyn_int8") if all(r.get("dyn_int8") for r in done) else None,
            static_acc=fmean(r["static_acc"] for r in done),
            static_gflops=fmean(r["static_gflops"] for r in done),
            dyn_full_acc=fmean(r["dyn_full_acc"] for r in done),
            dyn_exit_acc=[fmean(accs) for accs in zip(*(r["dyn_exit_acc"] for r in done), strict=True)],
            dyn_best_at_target=fmean(best) if None not in best else None,
            dyn=_mode_means(done, "dyn"),
        )
    return row


def _mode_means(rows: Sequence[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    """Each mode's accuracy, GFLOPs and FLOPs saved under ``key``, averaged over ``rows``."""
    return {m: {k: fmean(r[key][m][k] for r in rows) for k in ("acc", "gflops", "saved")} for m in MODES}


def seed_deltas(runs: RunResults, petl: str, tasks: Sequence[str]) -> dict[int, float]:
    """seed -> that seed's suite-mean accuracy difference, ``balanced`` minus static, for every seed
    whose static and Dyn-Adapter cells finished on every task: the target's spread over seeds."""
    seeds = sorted({seed for (_, p, _, seed) in runs if p == petl})
    deltas = {}
    for seed in seeds:
        cells = [(runs.get((t, petl, "static", seed)), runs.get((t, petl, "dyn", seed))) for t in tasks]
        done = [(static, dyn) for static, dyn in cells if static is not None and dyn is not None]
        if len(done) == len(tasks):
            deltas[seed] = fmean(dyn["modes"]["balanced"]["acc"] - static["acc"] for static, dyn in done)
    return deltas


def int8_seed_deltas(runs: RunResults, petl: str, tasks: Sequence[str]) -> dict[str, list[float]]:
    """task -> each seed's int8 ``balanced`` test accuracy minus fp32 ``balanced``'s (seeds in order,
    those whose Dyn-Adapter cell has int8 numbers): the spread the int8 bound stands against."""
    out: dict[str, list[float]] = {}
    for (task, p, variant, _), result in sorted(runs.items(), key=lambda kv: kv[0][3]):
        int8 = _get(result, "int8", "modes", "balanced", "acc")
        if p == petl and variant == "dyn" and task in tasks and int8 is not None:
            out.setdefault(task, []).append(int8 - result["modes"]["balanced"]["acc"])
    return out


def ablation_row(variant: str, label: str, per_task: dict[str, dict | None]) -> dict[str, Any]:
    done = {t: r for t, r in per_task.items() if r is not None}
    modes = {
        m: {
            "acc": fmean(r["modes"][m]["acc"] for r in done.values()),
            "saved": fmean(r["modes"][m]["saved"] for r in done.values()),
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
        **modes,
        "per_task": {
            t: {m: {k: r["modes"][m][k] for k in ("acc", "saved")} for m in ("balanced", "accurate")}
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
) -> dict[str, Any]:
    """The accuracy sections of results.json from ``(task, petl, variant, seed) -> result or None``;
    ``probe``: the (petl, variant) of the frozen-probe cells; ``suite_plan``: cells of each kind
    ("probe", "static", "dynamic") in the whole default suite, which ``budget`` projects."""
    lookup = by_cell(runs)
    probes = [probe_row(t, lookup.get((t, *probe))) for t in tasks]
    by_method = {
        petl: [cell_row(t, petl, lookup.get((t, petl, "static")), lookup.get((t, petl, "dyn"))) for t in tasks]
        for petl in methods
    }
    rows = [row for per_task in by_method.values() for row in per_task]
    means = [mean_row(petl, per_task) for petl, per_task in by_method.items()]
    ablation = [
        ablation_row(v, label, {t: lookup.get((t, ablation_petl, v)) for t in tasks})
        for v, label in {"dyn": "Dyn-Adapter, every part on", **ablations}.items()
    ]
    # An ablation nobody asked for (no cell of it finished) is not "unfinished": the page says it was not run.
    ablation_run = any(row["tasks"] for row in ablation[1:])
    missing = [
        f"{t}/{p}-{v}" + (f"-seed{s}" if s else "")
        for (t, p, v, s), r in runs.items()
        if r is None and (ablation_run or v not in ablations)
    ]
    times = timing(runs)
    return {
        "config": config,
        "tasks": list(tasks),
        "methods": list(methods),
        "rows": rows + means,
        "probe": [*probes, probe_mean(probes)],
        "target": [target(m, len(tasks), seed_deltas(runs, m["petl"], tasks)) for m in means],
        "shift_target": [
            shift_target(m, probes, len(tasks), by_method[m["petl"]]) for m in means if m["petl"] != probe[0]
        ],
        "int8_target": [int8_target(petl, by_method[petl], int8_seed_deltas(runs, petl, tasks)) for petl in methods],
        "ablation": ablation,
        "missing": missing,
        "timing": times,
        "budget": budget(times, suite_plan or {}),
        "devices": devices(runs),
    }


def timing(runs: RunResults) -> dict[str, Any]:
    """Wall-clock seconds per finished cell (training, calibration, evaluation on the test split and,
    for cells finished since 2026-12-01, its shifted copy, and the int8 column where there is one), by
    variant (the frozen probe apart)."""
    seconds: dict[str, list[float]] = {}
    for (_, _, variant, _), r in runs.items():
        if r is not None:
            kind = variant if variant in ("static", "probe") else "dynamic"
            seconds.setdefault(kind, []).append(r["seconds"] + (_get(r, "int8", "seconds") or 0.0))
    return {kind: {"cells": len(s), "mean_s": fmean(s), "total_s": sum(s)} for kind, s in seconds.items()}


def devices(runs: RunResults) -> dict[str, int]:
    """Finished cells per device they trained on (``cells.cell_device``: a GPU's or CPU's name)."""
    return dict(Counter(r["device"] for r in runs.values() if r is not None and "device" in r))
