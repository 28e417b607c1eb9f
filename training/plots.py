"""Accuracy against GFLOPs: the picture people look at to pick a mode."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy_vs_gflops(
    sweep: Sequence[dict[str, Any]],
    exit_points: Sequence[tuple[float, float]],
    modes: dict[str, dict[str, Any]],
    baselines: dict[str, tuple[float, float]],
    path: Path,
    title: str,
) -> None:
    """The threshold sweep as a curve, each exit alone and each baseline as points, modes labelled."""
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
    for (g, a), names in points.items():
        ax.plot(g, a, "o", color="tab:orange")
        ax.annotate("/".join(names), (g, a), textcoords="offset points", xytext=(5, -12))
    for name, (g, a) in baselines.items():
        ax.plot(g, 100 * a, "*", ms=11, label=name)
    ax.set_xlabel("mean GFLOPs per image (1 multiply-add = 1 FLOP)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
