"""``dynadapter bench fewshot``: Dyn-Adapter, its static baseline and the frozen probe with K images a class.

For every task and every K (default 1, 2, 4, 8, 16), three cells of the accuracy suite's cache
(``dynadapter.bench.suite.cells``, directories ``<petl>-<variant>[-seed<S>]-k<K>``) are trained on K
training images per class (``--shots K``, drawn with the seed; val and test stay whole): the PETL
method with exits (Dyn-Adapter, its ``balanced`` mode), the same method static, and the frozen probe
(a linear head at the block best on val). Every K trains the same number of optimizer steps
(``--steps``), so that K=1 is not also the shortest run. Reported per K: test and shifted-test
accuracy (means over ``--seeds``) and mean GFLOPs per image; one figure,
docs/results/fewshot.png, and a section of docs/results.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import fmean
from typing import Any

from dynadapter.bench.suite.flags import add_recipe_arguments, seed_list, suite_config
from dynadapter.bench.suite.rows import CellResult, FewshotPoint, FewshotSection
from dynadapter.errors import ConfigError

RESULT_KEYS = ("fewshot",)
DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_TASKS = ("digits", "mnist", "elpv", "elpv-type")
#: Optimizer steps of every few-shot cell: 16-shot on a 10-class task is 5 batches of 32, so 200
#: steps are 40 epochs there and 200 at 1-shot; about the 8 epochs x 25 batches of a full cell.
DEFAULT_STEPS = 200
#: (label on the page, (petl or None for the --petl method, variant))
ARMS = {
    "dyn": ("Dyn-Adapter (balanced)", (None, "dyn")),
    "static": ("static", (None, "static")),
    "probe": ("frozen probe", ("none", "probe")),
}


def _ints(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        values = []
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, e.g. 1,2,4,8,16; got {text!r}")
    return values


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fewshot",
        help="accuracy and FLOPs with K training images per class: Dyn-Adapter, static, frozen probe",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"(default: {','.join(DEFAULT_TASKS)})")
    p.add_argument("--shots", type=_ints, default=list(DEFAULT_SHOTS), help="K values (default: 1,2,4,8,16)")
    p.add_argument("--petl", choices=["adapter", "lora", "repadapter"], default="adapter", help="(default: adapter)")
    p.add_argument("--seeds", type=seed_list, default=[0], help="training seeds (default: 0)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"per cell (default: {DEFAULT_STEPS})")
    add_recipe_arguments(p)


def run(args: argparse.Namespace) -> None:
    from dynadapter.bench.lab.results import update_results
    from dynadapter.bench.suite import cells
    from dynadapter.training.data import BUILTIN_DATASETS

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(BUILTIN_DATASETS)) or ([] if args.steps >= 1 else ["--steps"])
    if unknown or not tasks:
        raise ConfigError(f"--tasks {args.tasks} / --steps {args.steps}: builtin tasks {sorted(BUILTIN_DATASETS)}")
    config = suite_config(args, 1, steps=args.steps)
    todo = [
        cells.Cell(t, petl or args.petl, variant, s, k)
        for s in args.seeds
        for k in args.shots
        for t in tasks
        for petl, variant in (arm for _, arm in ARMS.values())
    ]

    def publish(results: cells.Results) -> dict[str, Any]:
        points = {(c.task, c.variant, c.shots, c.seed): r for c, r in results.items()}
        section = fewshot_section(points, tasks, args, config.record(todo[0]))
        plot_fewshot(section, args.docs / "results" / "fewshot.png")
        return update_results(args.docs, {"fewshot": section})

    trainable = set() if args.report_only else set(todo)
    print(render_markdown(publish(cells.run_suite(todo, config, trainable, publish))))


def arm_point(variant: str, result: dict[str, Any]) -> dict[str, float | None]:
    """One cell's (accuracy, shifted accuracy, GFLOPs): Dyn-Adapter at ``balanced``, the static model at
    its last exit, the probe at its block chosen on val."""
    cell = CellResult.model_validate(result)
    if variant == "dyn":
        balanced = cell.balanced()
        return {"acc": balanced.acc, "shifted_acc": cell.shifted.modes["balanced"].acc, "gflops": balanced.gflops}
    if variant == "probe":
        if cell.probe is None:
            raise ValueError("a probe cell without its probe choice")
        p = cell.probe
        return {"acc": p.acc, "shifted_acc": p.shifted_acc, "gflops": p.gflops, "block": p.block}
    return {"acc": cell.acc, "shifted_acc": cell.shifted.acc, "gflops": cell.gflops}


def fewshot_section(
    results: dict[tuple[str, str, int | None, int], dict[str, Any] | None],
    tasks: list[str],
    args: argparse.Namespace,
    config: dict[str, Any],
) -> dict[str, Any]:
    """``fewshot`` of results.json: per task, K and arm the mean over the finished seeds (None: none).

    ``results``: (task, variant, K, seed) -> a cell's result or None; ``config``: the cells' recipe."""
    rows = []
    for task in tasks:
        for k in args.shots:
            row: dict[str, Any] = {"task": task, "shots": k}
            for arm, (_, (_, variant)) in ARMS.items():
                found = [r for (t, v, shots, _), r in results.items() if (t, v, shots) == (task, variant, k) and r]
                points = [arm_point(variant, r) for r in found]
                row[arm] = (
                    {**{key: fmean(p[key] for p in points) for key in points[0]}, "seeds": len(points)}
                    if points
                    else None
                )
            rows.append(row)
    return {
        "tasks": tasks,
        "shots": list(args.shots),
        "petl": args.petl,
        "seeds": list(args.seeds),
        "steps": args.steps,
        "config": config,
        "rows": rows,
    }


def plot_fewshot(recorded: dict[str, Any], path: Path) -> None:
    """Test accuracy against K (log scale), one panel per task, one line per arm."""
    from dynadapter.training.plots import plt

    section = FewshotSection.model_validate(recorded)
    tasks = section.tasks
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), dpi=120, squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = [r for r in section.rows if r.task == task]
        for arm, (label, _) in ARMS.items():
            points = [(r.shots, 100 * point.acc) for r in rows if (point := r.arm(arm))]
            if points:
                ax.plot(*zip(*points, strict=True), "o-", ms=4, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training images per class (K)")
        ax.set_title(f"builtin:{task}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(loc="best", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _cell(point: FewshotPoint | None) -> str:
    if point is None:
        return "missing"
    return f"{100 * point.acc:.1f} / {100 * point.shifted_acc:.1f} / {point.gflops:.3g}"


def render_markdown(results: dict[str, Any]) -> str:
    """The few-shot section of docs/results.md (empty when results.json has none)."""
    if not results.get("fewshot"):
        return ""
    section = FewshotSection.model_validate(results["fewshot"])
    c = section.config
    intro = (
        "## Few-shot\n\n"
        f"`dynadapter bench fewshot`: K training images per class (drawn with the seed; val and test whole), "
        f"PETL `{section.petl}`, backbone `{c.backbone}` at {c.img_size} px, {section.steps} optimizer "
        f"steps per cell whatever K, seeds {', '.join(map(str, section.seeds))} (means). Each cell: test "
        "accuracy (%) / shifted-test accuracy (%) / mean GFLOPs per image. Dyn-Adapter at its `balanced` "
        "mode (thresholds calibrated on the val split); the frozen probe at its block best on val.\n\n"
        "![few-shot accuracy against K](results/fewshot.png)"
    )
    parts = [intro]
    header = "| task | K | " + " | ".join(label for label, _ in ARMS.values()) + " |"
    lines = [header, "|" + " --- |" * (2 + len(ARMS))]
    for r in section.rows:
        lines.append(f"| {r.task} | {r.shots} | " + " | ".join(_cell(r.arm(arm)) for arm in ARMS) + " |")
    parts.append("\n".join(lines))
    return "\n\n".join(parts)
