"""One figure per task: accuracy against GFLOPs, every PETL method's threshold sweep as a curve and
its static baseline as a star of the same colour (``dynadapter.training.plots`` draws one run; this draws the
suite's methods side by side, in the same style)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dynadapter.training.plots import plt  # pyplot on the files-only backend that dynadapter.training.plots selects


def plot_task(
    task: str,
    methods: Sequence[str],
    dynamic: dict[str, dict[str, Any]],
    static: dict[str, dict[str, Any]],
    path: Path,
    probe: dict[str, Any] | None = None,
) -> None:
    """``dynamic`` / ``static``: PETL method -> the cell result (``dynadapter.bench.cells.summarize_run``);
    ``methods`` fixes each method's colour, whichever cells have finished; ``probe``: the frozen
    probe's cell result (its ``probe`` part: accuracy and GFLOPs at the block chosen on validation)."""
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
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
