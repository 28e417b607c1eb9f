"""Accuracy against GFLOPs: the picture people look at to pick a mode."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Annotation  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

# Label placement: how far a label may be pushed (in steps of its own height) before it is left where it is.
_MAX_SHIFTS = 12
_MARKER_PAD_PX = 4  # a marker's box, grown by this, must stay clear of every label


def plot_accuracy_vs_gflops(
    sweep: Sequence[dict[str, Any]],
    exit_points: Sequence[tuple[float, float]],
    modes: dict[str, dict[str, Any]],
    baselines: dict[str, tuple[float, float]],
    path: Path,
    title: str,
) -> None:
    """The threshold sweep as a curve, each exit alone and each baseline as points, modes labelled; to `path`."""
    save(accuracy_vs_gflops_figure(sweep, exit_points, modes, baselines, title), path)


def accuracy_vs_gflops_figure(
    sweep: Sequence[dict[str, Any]],
    exit_points: Sequence[tuple[float, float]],
    modes: dict[str, dict[str, Any]],
    baselines: dict[str, tuple[float, float]],
    title: str,
) -> Figure:
    """`plot_accuracy_vs_gflops`'s figure: mode labels kept clear of each other and of every marker, the
    legend outside the axes (so it covers no point)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    rows = sorted(sweep, key=lambda r: r["gflops"])
    ax.plot(
        [r["gflops"] for r in rows],
        [100 * r["accuracy"] for r in rows],
        "-",
        color="tab:blue",
        label="Dyn-Adapter (threshold sweep)",
    )
    ax.plot(
        *zip(*[(g, 100 * a) for g, a in exit_points], strict=True), "s", color="tab:gray", ms=5, label="single exit"
    )
    points: dict[tuple[float, float], list[str]] = {}
    for name, r in modes.items():  # modes calibrated to the same threshold share one label
        points.setdefault((r["gflops"], 100 * r["accuracy"]), []).append(name)
    labels = []
    for (g, a), names in sorted(points.items()):
        ax.plot(g, a, "o", color="tab:orange")
        labels.append(ax.annotate("/".join(names), (g, a), textcoords="offset points", xytext=(5, -12)))
    for name, (g, a) in baselines.items():
        ax.plot(g, 100 * a, "*", ms=11, label=name)
    ax.set_xlabel("mean GFLOPs per image (1 multiply-add = 1 FLOP)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    fig.tight_layout()  # before placing: the layout fixes where each marker lands in display space
    place_labels(fig, ax, labels)
    return fig


def legend_outside(ax: Any) -> None:
    """The legend under the axes, so that it never covers a marker (the figure is saved with a tight box)."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=7, ncol=2, frameon=False)


def marker_boxes(fig: Figure, ax: Any) -> list[Bbox]:
    """Display-space boxes of every marker drawn by ``ax.plot`` (lines with a marker), padded."""
    boxes = []
    for line in ax.get_lines():
        if line.get_marker() in (None, "None", "", " "):
            continue
        half = line.get_markersize() * fig.dpi / 72 / 2 + _MARKER_PAD_PX
        for x, y in ax.transData.transform(line.get_xydata()):
            boxes.append(Bbox.from_extents(x - half, y - half, x + half, y + half))
    return boxes


def place_labels(fig: Figure, ax: Any, labels: Sequence[Annotation]) -> None:
    """Push each label (an offset-points annotation) down, then up, by its own height until its box overlaps
    no marker and no label placed before it: adjustText's idea, by hand, for the few labels a plot has."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    taken = marker_boxes(fig, ax)
    for label in labels:
        x, y = label.xyann
        height = label.get_window_extent(renderer).height * 72 / fig.dpi + 2  # points
        for step in range(2 * _MAX_SHIFTS + 1):
            shift = (step + 1) // 2 * (-1 if step % 2 else 1)  # 0, -1, +1, -2, +2, ...
            label.xyann = (x, y + shift * height)
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in taken):
                break
        taken.append(label.get_window_extent(renderer))


def save(fig: Figure, path: Path) -> None:
    """Write `fig` (laid out) to `path` with a box around everything drawn (the legend outside the axes
    included); closes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
