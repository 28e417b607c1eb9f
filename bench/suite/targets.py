"""The accuracy suite's targets, judged on the aggregated rows (``suite.aggregate``): the paper's claim at
``balanced`` (at least half the static baseline's FLOPs saved, the suite-mean accuracy within 0.5 points
of it), issue 19's targets on the shifted split and budget, issue 18's int8 bound; each verdict says by
how much it misses; issue 34's: every exit at least the frozen probe at its block. Pure Python, like the rest
of the page."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean, stdev
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from dynadapter.bench.lab.results import pct
from dynadapter.training.options import default_exits

if TYPE_CHECKING:  # suite.rows holds this module's verdicts: a run-time import would be a circle
    from dynadapter.bench.suite.rows import CellNumbers

TARGET_SAVED = 0.50
TARGET_ACC_DROP = 0.005
#: Issue 19's targets on the shifted split, suite means at ``balanced``: Dyn-Adapter at least this
#: far above the frozen probe, and losing at most this much more from clean to shifted than static.
SHIFT_MARGIN_OVER_PROBE = 0.02
SHIFT_EXTRA_LOSS = 0.01
#: Issue 19's budget: the whole default suite (every task, PETL method and seed) within 4 hours.
SUITE_BUDGET_S = 4 * 3600
#: Issue 18's bound: int8 ``balanced`` at most this far below fp32 ``balanced`` (test accuracy).
INT8_MAX_TEST_DROP = 0.003


def best_at_target(dyn: CellNumbers) -> float | None:
    """The best test accuracy of any threshold saving the target's share of the static FLOPs: what a
    perfect calibration would have picked (None if no threshold saves that much, or the cell does not
    record the static GFLOPs)."""
    if dyn.reference_gflops is None:
        return None
    limit = (1.0 - TARGET_SAVED) * dyn.reference_gflops + 1e-12
    fits = [acc for gflops, acc in dyn.sweep if gflops <= limit]
    return max(fits) if fits else None


class Verdict(BaseModel):
    """A target row of results.json read back for the page: one PETL method's verdict, ``met`` None before it
    could be judged, and ``why`` it missed (empty where it did not)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    petl: str
    met: bool | None
    why: str = ""


class ClaimVerdict(Verdict):
    """A ``target`` row (``target``): the paper's claim over ``tasks`` of ``of`` tasks; fractions in [0, 1]
    (``saved``, the shortfalls), accuracy differences as fractions (``acc_delta``: balanced minus static),
    ``seed_deltas`` by seed as written (a string key); the numbers are None before any task finished."""

    tasks: int
    of: int
    complete: bool
    seed_deltas: dict[str, float] = {}
    acc_delta_std: float | None = None
    saved: float | None = None
    acc_delta: float | None = None
    saved_short: float | None = None
    acc_short: float | None = None
    best_at_target: float | None = None


class ShiftVerdict(Verdict):
    """A ``shift_target`` row (``shift_target``): suite-mean accuracies on the shifted split and the two
    margins, as fractions, and each task's extra loss split in two (`shift_loss_parts`); None until judged."""

    dyn_shifted: float | None = None
    probe_shifted: float | None = None
    over_probe: float | None = None
    extra_loss: float | None = None
    per_task: dict[str, dict[str, float]] = {}


class ExitVerdict(Verdict):
    """An ``exit_target`` row (``exit_target``): per exit (after ``blocks``), the suite-mean test accuracy of
    Dyn-Adapter and of the frozen probe's head after the same block, on the clean and the shifted test split
    (fractions; empty until judged)."""

    blocks: list[int] = []
    dyn: list[float] = []
    probe: list[float] = []
    dyn_shifted: list[float] = []
    probe_shifted: list[float] = []


class Int8Verdict(Verdict):
    """An ``int8_target`` row (``int8_target``): int8 minus fp32 ``balanced`` test accuracy per task and its mean
    (fractions), and the mean argmax agreement with PyTorch per exit (None without int8 numbers)."""

    deltas: dict[str, float] = {}
    mean_delta: float | None = None
    agreement: list[float] | None = None


def target(row: dict[str, Any], num_tasks: int, per_seed: dict[int, float] | None = None) -> dict[str, Any]:
    """Whether a method's suite mean meets the paper's claim at ``balanced``, and by how much it misses;
    ``per_seed`` (``seed_deltas``): each complete seed's accuracy difference, whose sample standard
    deviation says how far the verdict is from noise."""
    per_seed = per_seed or {}
    out: dict[str, Any] = {
        "petl": row["petl"],
        "tasks": row["tasks"],
        "of": num_tasks,
        "complete": row["tasks"] == num_tasks,
        "seed_deltas": {str(seed): d for seed, d in per_seed.items()},
        "acc_delta_std": stdev(per_seed.values()) if len(per_seed) > 1 else None,
    }
    if row["dyn"] is None:
        return {**out, "met": None}
    balanced = row["dyn"]["balanced"]
    saved_short = max(0.0, TARGET_SAVED - balanced["saved"])
    acc_short = max(0.0, row["static_acc"] - TARGET_ACC_DROP - balanced["acc"])
    met = saved_short == 0 and acc_short == 0
    return {
        **out,
        "met": met,
        "saved": balanced["saved"],
        "acc_delta": balanced["acc"] - row["static_acc"],
        "saved_short": saved_short,
        "acc_short": acc_short,
        "best_at_target": row["dyn_best_at_target"],
        "why": "" if met else why_missed(row),
    }


def shift_target(
    row: dict[str, Any], probes: Sequence[dict[str, Any]], num_tasks: int, rows: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Issue 19's targets for a method's suite mean on the shifted split, judged once its static and
    Dyn-Adapter cells and the probe have shifted numbers on every task (``met`` None until then):
    ``over_probe``, Dyn-Adapter ``balanced`` minus the frozen probe; ``extra_loss``, Dyn-Adapter's
    clean-to-shifted loss minus the static baseline's. ``rows``: the method's per-task rows, whose
    ``shift_loss_parts`` make ``per_task`` and, on a miss, ``why``."""
    out: dict[str, Any] = {"petl": row["petl"], "met": None}
    probe_done = [p for p in probes if p.get("shifted_acc") is not None]
    complete = row["tasks"] == len(probe_done) == num_tasks
    if not complete or row["dyn_shifted"] is None or row["static_shifted_acc"] is None:
        return out
    dyn_clean, dyn_shifted = row["dyn"]["balanced"]["acc"], row["dyn_shifted"]["balanced"]["acc"]
    probe_shifted = fmean(p["shifted_acc"] for p in probe_done)
    over_probe = dyn_shifted - probe_shifted
    extra_loss = (dyn_clean - dyn_shifted) - (row["static_acc"] - row["static_shifted_acc"])
    met = over_probe >= SHIFT_MARGIN_OVER_PROBE and extra_loss <= SHIFT_EXTRA_LOSS
    per_task = {r["task"]: parts for r in rows if (parts := shift_loss_parts(r)) is not None}
    return {
        **out,
        "dyn_shifted": dyn_shifted,
        "probe_shifted": probe_shifted,
        "over_probe": over_probe,
        "extra_loss": extra_loss,
        "per_task": per_task,
        "met": met,
        "why": "" if met else why_shift_missed(over_probe, extra_loss, per_task, rows),
    }


def exit_target(petl: str, rows: Sequence[dict[str, Any]], probes: dict[str, CellNumbers | None]) -> dict[str, Any]:
    """Issue 34's floor on every exit: each exit's suite-mean test accuracy at least that of the frozen probe's
    linear head after the same block (the probe has one after every block), on the clean test split and on
    its shifted copy; judged once every task's Dyn-Adapter cell and probe have both (``met`` None until
    then). ``rows``: the method's per-task rows (``dyn_exit_acc``, ``dyn_shifted_exit_acc``); ``probes``:
    task -> the probe's cell (its ``exit_accuracy`` per block, clean and shifted). A Dyn-Adapter cell's
    exits sit where ``dynadapter train`` puts them by default (``default_exits``)."""
    out: dict[str, Any] = {"petl": petl, "met": None}
    pairs = [(r, probes.get(r["task"])) for r in rows]
    if not pairs or any(
        not r.get("dyn_shifted_exit_acc") or p is None or not p.exit_accuracy or not p.shifted.exit_accuracy
        for r, p in pairs
    ):
        return out
    per_task = {}
    for row, probe in pairs:
        assert probe is not None and probe.exit_accuracy and probe.shifted.exit_accuracy
        blocks = default_exits(len(probe.exit_accuracy), len(row["dyn_exit_acc"]))
        per_task[row["task"]] = {
            "dyn": row["dyn_exit_acc"],
            "probe": [probe.exit_accuracy[b - 1] for b in blocks],
            "dyn_shifted": row["dyn_shifted_exit_acc"],
            "probe_shifted": [probe.shifted.exit_accuracy[b - 1] for b in blocks],
        }
    means = {
        key: [fmean(column) for column in zip(*(t[key] for t in per_task.values()), strict=True)]
        for key in ("dyn", "probe", "dyn_shifted", "probe_shifted")
    }
    met = all(
        d >= p
        for d, p in zip(means["dyn"] + means["dyn_shifted"], means["probe"] + means["probe_shifted"], strict=True)
    )
    return {
        **out,
        "blocks": blocks,
        **means,
        "met": met,
        "why": "" if met else why_exits_missed(blocks, means, per_task),
    }


def why_exits_missed(
    blocks: list[int], means: dict[str, list[float]], per_task: dict[str, dict[str, list[float]]]
) -> str:
    """The exits below the probe at their block (clean and shifted, in points), and the task that falls
    furthest below it at the worst of them."""
    short = []
    for split, dyn, probe in (("clean", "dyn", "probe"), ("shifted", "dyn_shifted", "probe_shifted")):
        gaps = [(b, d - p) for b, d, p in zip(blocks, means[dyn], means[probe], strict=True) if d < p]
        if not gaps:
            continue
        worst_block, _ = min(gaps, key=lambda g: g[1])
        k = blocks.index(worst_block)
        task = min(per_task, key=lambda t: per_task[t][dyn][k] - per_task[t][probe][k])
        gap = per_task[task][dyn][k] - per_task[task][probe][k]
        listed = ", ".join(f"block {b} {100 * g:+.2f}" for b, g in gaps)
        short.append(f"{split}: {listed} points (at block {worst_block}, {task} is furthest below: {100 * gap:+.2f})")
    return "below the probe at their block, " + "; ".join(short) + "."


def shift_loss_parts(row: dict[str, Any]) -> dict[str, float] | None:
    """A (task, method) row's extra clean-to-shifted loss at ``balanced`` (fractions), split exactly in
    two: ``model``, how much more the Dyn-Adapter model's last exit loses than the static baseline
    does; ``early_exit``, how much more ``balanced`` falls behind that last exit on the shifted split
    than on the clean one (what leaving early costs under shift). None without shifted numbers."""
    shifted = (row.get("dyn_shifted") or {}).get("balanced")
    if shifted is None or row.get("dyn_shifted_full_acc") is None or row["static_shifted_acc"] is None:
        return None
    model = (row["dyn_full_acc"] - row["dyn_shifted_full_acc"]) - (row["static_acc"] - row["static_shifted_acc"])
    early = (row["dyn"]["balanced"]["acc"] - row["dyn_full_acc"]) - (shifted["acc"] - row["dyn_shifted_full_acc"])
    return {"extra_loss": model + early, "model": model, "early_exit": early}


def why_shift_missed(
    over_probe: float, extra_loss: float, per_task: dict[str, dict[str, float]], rows: Sequence[dict[str, Any]]
) -> str:
    """Where the shifted target's miss comes from: short of the probe margin, and/or the task that
    carries most of the extra loss, split into the model's and early exiting's parts, with that task's
    per-exit accuracy on clean and shifted test images and ``balanced``'s FLOPs on each."""
    reasons = []
    if over_probe < SHIFT_MARGIN_OVER_PROBE:
        reasons.append(f"`balanced` is only {100 * over_probe:+.2f} points over the frozen probe on the shifted split.")
    if extra_loss > SHIFT_EXTRA_LOSS and per_task:
        task, worst = max(per_task.items(), key=lambda kv: kv[1]["extra_loss"])
        row = next(r for r in rows if r["task"] == task)
        others = [p["extra_loss"] for t, p in per_task.items() if t != task]
        spread = f" (the other tasks {100 * min(others):+.2f} to {100 * max(others):+.2f})" if others else ""
        exits = " / ".join(
            f"{pct(clean)} → {pct(shifted)}"
            for clean, shifted in zip(row["dyn_exit_acc"], row["dyn_shifted_exit_acc"] or [], strict=False)
        )
        used = {
            name: modes["balanced"]["gflops"] / row["static_gflops"]
            for name, modes in (("clean", row["dyn"]), ("shifted", row["dyn_shifted"]))
        }
        reasons.append(
            f"{task} carries the extra loss: {100 * worst['extra_loss']:+.2f} points{spread}. Of those, "
            f"{100 * worst['model']:+.2f} are the model's (its last exit loses that much more from clean to "
            f"shifted than static does) and {100 * worst['early_exit']:+.2f} are leaving early (`balanced` "
            f"falls that much further behind the last exit on shifted images than on clean ones, though it "
            f"spends {used['shifted']:.0%} of the static FLOPs on them against {used['clean']:.0%}). "
            f"Accuracy per exit, clean → shifted (%): {exits}. "
            + (
                "Leaving early costs most: the early exits lose more to the corruptions than the last one, "
                "and thresholds calibrated on clean validation images still let shifted images out there."
                if worst["early_exit"] > worst["model"]
                else "The model costs most: its last exit is less robust to the corruptions than static."
            )
        )
    return " ".join(reasons)


def int8_target(petl: str, rows: Sequence[dict[str, Any]], per_seed: dict[str, list[float]]) -> dict[str, Any]:
    """Issue 18's accuracy bound per task and on the mean over the tasks with int8 numbers: int8
    ``balanced`` within ``INT8_MAX_TEST_DROP`` of fp32 ``balanced``; with each exit's argmax agreement
    of int8 with PyTorch on validation (where quantization changes answers). ``met`` None without any.
    ``per_seed`` (``int8_seed_deltas``) gives each missing task's per-seed differences to ``why``."""
    done = [r for r in rows if r.get("dyn_int8")]
    deltas = {r["task"]: r["dyn_int8"]["balanced"]["acc"] - r["dyn"]["balanced"]["acc"] for r in done}
    agreement = [r["int8_agreement"] for r in done if r.get("int8_agreement")]
    met = all(d >= -INT8_MAX_TEST_DROP for d in deltas.values()) if deltas else None
    return {
        "petl": petl,
        "tasks": len(done),
        "deltas": deltas,
        "seed_deltas": per_seed,
        "mean_delta": fmean(deltas.values()) if deltas else None,
        "agreement": [fmean(a) for a in zip(*agreement, strict=True)] if agreement else None,
        "met": met,
        "why": why_int8_missed(deltas, per_seed, done) if met is False else "",
    }


def why_int8_missed(deltas: dict[str, float], per_seed: dict[str, list[float]], rows: Sequence[dict[str, Any]]) -> str:
    """Each task over the int8 bound: its difference beside the FLOPs each precision's own thresholds
    save (int8 is calibrated anew, so a cheaper operating point costs accuracy too), its per-seed
    differences and their standard deviation, and its last exit's argmax agreement with PyTorch (where
    quantization itself changes answers); then whether the misses lie within the seeds' spread."""
    by_task = {r["task"]: r for r in rows}
    parts, within = [], []
    for task, delta in deltas.items():
        if delta >= -INT8_MAX_TEST_DROP:
            continue
        row, seeds = by_task[task], per_seed.get(task, [])
        int8_saved, fp32_saved = row["dyn_int8"]["balanced"]["saved"], row["dyn"]["balanced"]["saved"]
        saved = f"{pct(int8_saved)}% of FLOPs saved against fp32's {pct(fp32_saved)}%"
        details = [" / ".join(f"{100 * d:+.1f}" for d in seeds)] if seeds else []
        if len(seeds) > 1:
            spread = stdev(seeds)
            details.append(f"std {100 * spread:.1f}")
            within += [task] if spread >= INT8_MAX_TEST_DROP else []
        if row.get("int8_agreement"):
            details.append(f"last-exit agreement {row['int8_agreement'][-1]:.3f}")
        parts.append(
            f"{task} {100 * delta:+.1f} points at {saved}" + (f" (seeds {'; '.join(details)})" if details else "")
        )
    agreement = {t: r["int8_agreement"][-1] for t, r in by_task.items() if r.get("int8_agreement")}
    closing = ""
    if within:
        closing += (
            f" The seeds' differences on {' and '.join(within)} spread at least as wide as the "
            f"{100 * INT8_MAX_TEST_DROP:.1f}-point bound: the miss is within the noise of one calibration."
        )
    if agreement:
        low = min(agreement, key=agreement.__getitem__)
        closing += f" Quantization changes most last-exit answers on {low} (agreement {agreement[low]:.3f})."
    return "; ".join(parts) + "." + closing


def why_missed(row: dict[str, Any]) -> str:
    """Whether the model or its calibration falls short: the best threshold on the test split that
    saves enough, against the one calibrated on the validation split."""
    static, balanced, best = row["static_acc"], row["dyn"]["balanced"]["acc"], row["dyn_best_at_target"]
    exits = " / ".join(pct(a) for a in row["dyn_exit_acc"])
    if best is None:
        return f"no threshold saves {TARGET_SAVED:.0%} of the static FLOPs on the test split."
    if best >= static - TARGET_ACC_DROP:
        return (
            f"the model can: the best threshold on the test split saving {TARGET_SAVED:.0%} reaches "
            f"{pct(best)}% ({100 * (best - static):+.2f} points against static); the threshold calibrated "
            f"on the validation split (200 images a task) gives {pct(balanced)}%, "
            f"{100 * (best - balanced):.2f} points below that best."
        )
    return (
        f"the exits are not accurate enough: even the best threshold on the test split saving "
        f"{TARGET_SAVED:.0%} reaches only {pct(best)}% ({100 * (best - static):+.2f} points against "
        f"static); accuracy per exit alone: {exits}%, last exit {100 * (row['dyn_full_acc'] - static):+.2f} "
        "points against static."
    )


def budget(times: dict[str, Any], plan: dict[str, int]) -> dict[str, Any] | None:
    """The whole suite's wall-clock time projected from the finished cells: ``plan``'s count of each
    kind of cell times that kind's mean seconds, against ``SUITE_BUDGET_S``. None until every kind in
    the plan has a finished cell."""
    if not plan or any(kind not in times for kind in plan):
        return None
    projected = sum(n * times[kind]["mean_s"] for kind, n in plan.items())
    return {"plan": plan, "projected_s": projected, "bound_s": SUITE_BUDGET_S, "met": projected <= SUITE_BUDGET_S}
