"""The benchmarks' figures.

``bench accuracy``: one figure per task, accuracy against GFLOPs, every PETL method's threshold sweep
as a curve and its static baseline as a star of the same colour (``dynadapter.training.plots`` draws
one run; this draws the suite's methods side by side, in the same style). ``bench adapt``: the load
ramp and the drift scenario over time (``plot_ramp``, ``plot_drift``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# pyplot on the files-only backend that dynadapter.training.plots selects
from dynadapter.training.plots import legend_outside, plt


def plot_task(
    task: str,
    methods: Sequence[str],
    dynamic: dict[str, dict[str, Any]],
    static: dict[str, dict[str, Any]],
    path: Path,
    probe: dict[str, Any] | None = None,
) -> None:
    """``task_figure`` written to ``path``."""
    _save(task_figure(task, methods, dynamic, static, probe), path)


def task_figure(
    task: str,
    methods: Sequence[str],
    dynamic: dict[str, dict[str, Any]],
    static: dict[str, dict[str, Any]],
    probe: dict[str, Any] | None = None,
) -> Any:
    """``dynamic`` / ``static``: PETL method -> the cell result (``dynadapter.bench.suite.cells.summarize_run``);
    ``methods`` fixes each method's colour, whichever cells have finished; ``probe``: the frozen
    probe's cell result (its ``probe`` part: accuracy and GFLOPs at the block chosen on validation).
    The legend lies under the axes, clear of every marker."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for petl, result in dynamic.items():
        points = sorted(result["sweep"])
        ax.plot(
            [g for g, _ in points],
            [100 * a for _, a in points],
            "-",
            color=colours[petl],
            label=f"{petl} Dyn-Adapter (sweep)",
        )
        balanced = result["modes"]["balanced"]
        ax.plot(balanced["gflops"], 100 * balanced["acc"], "o", color=colours[petl], ms=5)
    for petl, result in static.items():
        ax.plot(
            result["gflops"],
            100 * result["acc"],
            "*",
            ms=12,
            color=colours[petl],
            markeredgecolor="black",
            markeredgewidth=0.5,
            label=f"{petl} static",
        )
    if probe is not None:
        p = probe["probe"]
        ax.plot(p["gflops"], 100 * p["acc"], "X", ms=9, color="black", label="frozen probe (best block on val)")
    ax.set_xlabel("mean GFLOPs per image (1 multiply-add = 1 FLOP)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"builtin:{task} (dots: balanced mode)")
    ax.grid(alpha=0.3)
    legend_outside(ax)  # never over the probe's or a static baseline's marker
    return fig


def _steps(ax: Any, timeline: dict[str, Any]) -> None:
    """Dotted lines at a ramp's step starts, labelled with the client count above the axes."""
    clients = sorted({row["t"]: row["clients"] for row in timeline["series"]}.items())
    for start in timeline["starts"]:
        count = next((c for t, c in clients if t >= start), None)
        ax.axvline(start, color="grey", lw=0.6, ls=":")
        ax.annotate(str(count), (start, 1.0), xycoords=("data", "axes fraction"), fontsize=7, va="bottom")


def _series(ax: Any, timeline: dict[str, Any], key: str, scale: float = 1.0, **style: Any) -> None:
    points = [(row["t"], row[key] * scale) for row in timeline["series"] if row.get(key) is not None]
    ax.plot([t for t, _ in points], [v for _, v in points], **style)


def _per_step(ax: Any, steps: list[dict[str, Any]], timeline: dict[str, Any], key: str, fmt: str, **style: Any) -> None:
    """One point per ramp step (in % of its requests), at the step's middle."""
    middles = [start + seconds / 2 for start, seconds in zip(timeline["starts"], timeline["seconds"], strict=True)]
    points = [(t, 100 * step[key]) for t, step in zip(middles, steps, strict=True) if step.get(key) is not None]
    ax.plot([t for t, _ in points], [v for _, v in points], fmt, ms=3, **style)


def plot_ramp(ramp: dict[str, Any], path: Path) -> None:
    """``bench adapt``'s load ramp over time: p95 against the target, throughput, accuracy per step (and the
    floor's on the controller's photos), the controller's operating threshold and expected FLOPs fraction."""
    fig, axes = plt.subplots(4, 1, figsize=(7.5, 9.0), dpi=120, sharex=True)
    timelines = ramp["timelines"]
    for name, timeline in timelines.items():
        _series(axes[0], timeline, "p95_ms", label=name)
        _series(axes[1], timeline, "throughput_rps", label=name)
        _per_step(axes[2], ramp["steps"][name], timeline, "accuracy", "o-", label=name)
    controller = timelines["controller"]
    floor = dict(color="black", lw=0.8, label="floor, controller's photos")
    _per_step(axes[2], ramp["steps"]["controller"], controller, "floor_accuracy", "--", **floor)
    _series(axes[3], controller, "threshold", label="threshold (answers)")
    for key, style in (("dynadapter_operating_threshold", "o"), ("dynadapter_operating_flops_fraction", "s")):
        points = [(row["t"], row[key]) for row in controller["scrapes"] if row.get(key) is not None]
        axes[3].plot(
            [t for t, _ in points], [v for _, v in points], style, ms=2.5, label=key.removeprefix("dynadapter_")
        )
    axes[0].axhline(ramp["target_p95_ms"], color="red", lw=0.8, ls="--", label="target")
    axes[0].set_yscale("log")
    for ax, label in zip(axes, ("p95 ms", "req/s", "accuracy %", "controller"), strict=True):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
        _steps(ax, controller)
    axes[-1].set_xlabel("seconds of each configuration's ramp (steps interleaved; clients above the dotted lines)")
    _save(fig, path)


def plot_drift(drift: dict[str, Any], path: Path) -> None:
    """``bench adapt``'s drift scenario over time: agreement with the last exit against 1 - epsilon, accuracy,
    and the live server's thresholds of mode balanced (the default, which the requests get) per exit."""
    fig, axes = plt.subplots(3, 1, figsize=(7.5, 7.0), dpi=120, sharex=True)
    for name, timeline in drift["timelines"].items():
        _series(axes[0], timeline, "agreement", 100, label=name)
        _series(axes[1], timeline, "accuracy", 100, label=name)
    live = drift["timelines"]["live"]
    balanced = 'mode="balanced"'  # the mode the drift's requests are served at (no knob: the default)
    for key in sorted({k for row in live["scrapes"] for k in row if k.startswith("dynadapter_live_threshold")}):
        if balanced not in key:
            continue
        points = [(row["t"], row[key]) for row in live["scrapes"] if row.get(key) is not None]
        label = key.removeprefix("dynadapter_live_threshold").replace("," + balanced, "")
        axes[2].plot([t for t, _ in points], [v for _, v in points], label=f"live threshold {label}")
    _series(axes[2], live, "threshold", color="black", lw=0.8, label="threshold (answers)")
    axes[0].axhline(100 * drift["verdict"]["bound"], color="red", lw=0.8, ls="--", label="1 - epsilon")
    shift, drift_s = live["starts"][1], live["seconds"][1]  # as the live server ran them
    for ax, label in zip(axes, ("agreement %", "accuracy %", "balanced's thresholds"), strict=True):
        ax.axvline(shift, color="black", lw=0.8)
        ax.axvspan(shift + (1 - drift["judge_fraction"]) * drift_s, shift + drift_s, color="grey", alpha=0.12)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    axes[-1].set_xlabel("seconds (clean photos, then corrupted from the black line; judged: shaded)")
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")  # the legend may lie outside the axes
    plt.close(fig)
