"""``dynadapter bench recipes``: which training recipe generalises, chosen on the validation splits.

Each candidate recipe (``RECIPES``, or ``--train-arg KEY=VALUE`` for one of your own, named
``custom``) trains the Dyn-Adapter cell of ``--petl`` on every task and seed: cells of the accuracy
suite's cache (``dynadapter.bench.cells``; the default recipe shares the suite's own cells, any other
gets cells of its own, ``-r<hash>``). The recipe chosen is the one with the best mean accuracy at
``balanced`` on the validation splits (where the modes are calibrated; the test splits never choose).
For every recipe the page also gives clean and shifted test accuracy at ``balanced`` and the FLOPs
saved, so that one sees whether the choice on validation carried over to test and to shifted images.
Flips are in no candidate: digits are not mirror-symmetric (a mirrored 2 is no 2), so ``hflip`` is a
per-task choice (``--train-arg hflip=0.5``).
"""

from __future__ import annotations

import argparse
import dataclasses
from statistics import fmean
from typing import Any

from dynadapter.bench.accuracy import DEFAULT_EPOCHS, DEFAULT_TASKS, add_recipe_arguments, seed_list, suite_config
from dynadapter.errors import ConfigError

RESULT_KEYS = ("recipes",)
#: name -> ``dynadapter train`` options; "default" is dynadapter train's own recipe.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    # timm's ImageNet-style augmentation, lightened for 8 epochs: crop scale from 35%, RandAugment
    # magnitude 9, label smoothing.
    "augment": {"crop_scale": "0.35,1", "auto_augment": "rand-m9-mstd0.5", "smoothing": 0.1},
    # regularisation of what trains (PETL branches and heads) without touching the images.
    "regularise": {"smoothing": 0.1, "head_dropout": 0.1, "petl_dropout": 0.1},
    # the learning rate a factor of ~3 either side of the default 1e-3. Epochs are not a candidate:
    # the suite's 4-hour budget holds 8 (docs/results.md, "Time per cell").
    "lr-low": {"lr": 3e-4},
    "lr-high": {"lr": 3e-3},
}
CUSTOM = "custom"
#: Mean validation accuracies closer than this are a tie (far below one image in a suite's splits).
TIE = 1e-9


def _recipe_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RECIPES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown recipe(s) {unknown or [text]}; choose from {', '.join(RECIPES)}")
    return list(dict.fromkeys(names))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipes",
        help="candidate training recipes on the suite's Dyn-Adapter cells, chosen on validation",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"(default: {','.join(DEFAULT_TASKS)})")
    p.add_argument(
        "--recipes",
        type=_recipe_names,
        default=list(RECIPES),
        help=f"candidates (default: {','.join(RECIPES)}): "
        + "; ".join(f"{name}: {_options(options)}" for name, options in RECIPES.items())
        + f"; --train-arg adds one more, '{CUSTOM}'",
    )
    p.add_argument("--petl", choices=["adapter", "lora", "repadapter"], default="adapter", help="(default: adapter)")
    p.add_argument("--seeds", type=seed_list, default=[0], help="training seeds (default: 0)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"per cell (default: {DEFAULT_EPOCHS})")
    add_recipe_arguments(p)


def candidates(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """name -> the recipe's options as the cells record them (`cells.recipe_options`)."""
    from dynadapter.bench import cells

    chosen = {name: cells.recipe_options(RECIPES[name].items()) for name in args.recipes}
    if args.train_arg:
        custom = cells.recipe_options(args.train_arg)
        same = [name for name, recipe in chosen.items() if recipe == custom]
        if same:
            raise ConfigError(f"--train-arg gives the same recipe as {same[0]!r}: nothing to compare")
        chosen[CUSTOM] = custom
    return chosen


def run(args: argparse.Namespace) -> None:
    from dynadapter.bench import cells
    from dynadapter.bench.results import update_results
    from dynadapter.training.data import BUILTIN_DATASETS

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(BUILTIN_DATASETS))
    if unknown or not tasks:
        raise ConfigError(f"--tasks {args.tasks}: the builtin data sets are {sorted(BUILTIN_DATASETS)}")
    base = suite_config(args, args.epochs)
    recipes = candidates(args)
    todo = [cells.Cell(t, args.petl, cells.DYN, s) for s in args.seeds for t in tasks]
    results: dict[str, dict[tuple[str, int], dict[str, Any] | None]] = {}
    for name, recipe in recipes.items():
        config = dataclasses.replace(base, recipe=recipe)
        found = cells.run_suite(todo, config, set() if args.report_only else set(todo))
        results[name] = {(c.task, c.seed): r for c, r in found.items()}
        section = recipes_section(results, recipes, tasks, args, base.record(todo[0]))
        update_results(args.docs, {"recipes": section})
    print(render_markdown({"recipes": section}))


def recipe_point(result: dict[str, Any]) -> dict[str, float]:
    """A Dyn-Adapter cell at ``balanced``: validation, test and shifted-test accuracy, FLOPs saved."""
    return {
        "val_acc": result["val_modes"]["balanced"]["acc"],
        "acc": result["modes"]["balanced"]["acc"],
        "shifted_acc": result["shifted"]["modes"]["balanced"]["acc"],
        "saved": result["modes"]["balanced"]["saved"],
    }


def recipes_section(
    results: dict[str, dict[tuple[str, int], dict[str, Any] | None]],
    recipes: dict[str, dict[str, Any]],
    tasks: list[str],
    args: argparse.Namespace,
    config: dict[str, Any],
) -> dict[str, Any]:
    """``recipes`` of results.json: per recipe the mean over tasks of the means over seeds, and the
    recipe chosen on validation among those whose every cell (task x seed) finished (None until one
    has). A task's numbers are shown once one seed has finished; ``missing`` lists the cells that have not."""
    rows = []
    for name, per_cell in results.items():
        per_task = {}
        for task in tasks:
            points = [recipe_point(r) for (t, _), r in per_cell.items() if t == task and r is not None]
            per_task[task] = {k: fmean(p[k] for p in points) for k in points[0]} if points else None
        missing = [f"{t}-seed{s}" for (t, s), r in per_cell.items() if r is None]
        done = [p for p in per_task.values() if p is not None]
        means = {k: fmean(p[k] for p in done) for k in done[0]} if done and not missing else None
        rows.append(
            {
                "recipe": name,
                "options": recipes[name],
                "complete": not missing,
                "missing": missing,
                "mean": means,
                "tasks": per_task,
            }
        )
    finished = [r for r in rows if r["complete"]]
    # The first listed of the best: equal image counts can average to floats 1e-16 apart
    # (0.9099999999999999 against 0.91), which must not break a tie against the default.
    best = max((r["mean"]["val_acc"] for r in finished), default=None)
    tied = [r["recipe"] for r in finished if best is not None and r["mean"]["val_acc"] >= best - TIE]
    return {
        "tasks": tasks,
        "petl": args.petl,
        "seeds": list(args.seeds),
        "config": config,
        "rows": rows,
        "chosen": tied[0] if tied else None,
        "tied": tied[1:],
    }


def _options(options: dict[str, Any]) -> str:
    """A recipe's options as ``--train-arg`` takes them (lists comma-separated)."""
    if not options:
        return "dynadapter train's defaults"
    text = {k: ",".join(f"{x:g}" for x in v) if isinstance(v, list) else v for k, v in options.items()}
    return ", ".join(f"{k}={v}" for k, v in text.items())


def _point(p: dict[str, float] | None) -> list[str]:
    if p is None:
        return ["missing"] * 4
    return [f"{100 * p[k]:.1f}" for k in ("val_acc", "acc", "shifted_acc")] + [f"{100 * p['saved']:.0f}%"]


def render_markdown(results: dict[str, Any]) -> str:
    """The recipes section of docs/results.md (empty when results.json has none)."""
    section = results.get("recipes")
    if not section:
        return ""
    c = section["config"]
    lines = ["| recipe | options | task | balanced val (%) | balanced test (%) | balanced shifted (%) | FLOPs saved |"]
    lines.append("|" + " --- |" * 7)
    chosen = section["chosen"]
    for r in section["rows"]:
        name = f"**{r['recipe']}** (chosen)" if r["recipe"] == chosen else r["recipe"]
        lines.append(f"| {name} | {_options(r['options'])} | mean | " + " | ".join(_point(r["mean"])) + " |")
        lines += [f"| | | {t} | " + " | ".join(_point(p)) + " |" for t, p in r["tasks"].items()]
    missing = [f"{r['recipe']}: {', '.join(r['missing'])}" for r in section["rows"] if r["missing"]]
    tied = section.get("tied") or []
    tie = f" (tied with {', '.join(tied)}; a tie goes to the first listed)" if tied else ""
    verdict = (
        f"Chosen on validation: **{chosen}**{tie}."
        if chosen
        else "No recipe has finished every task yet: none is chosen."
    )
    return (
        "## Training recipes\n\n"
        f"`dynadapter bench recipes`: Dyn-Adapter with `{section['petl']}`, backbone `{c['backbone']}` at "
        f"{c['img_size']} px, {c['epochs']} epoch{'s' if c['epochs'] != 1 else ''}, seeds "
        f"{', '.join(map(str, section['seeds']))} (means), the "
        "same cells as the accuracy suite's under each recipe. `balanced` on the validation split (where its "
        "threshold is calibrated; the only split that chooses), the test split and its shifted copy. "
        f"{verdict}\n\n" + "\n".join(lines) + ("\n\nCells not finished: " + "; ".join(missing) if missing else "")
    )
