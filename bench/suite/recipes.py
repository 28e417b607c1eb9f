"""``dynadapter bench recipes``: which training recipe generalises, chosen on the validation splits.

Each candidate recipe (``RECIPES``, or ``--train-arg KEY=VALUE`` for one of your own, named
``custom``) trains the Dyn-Adapter cell of each ``--petl`` method on every task and seed: cells of the accuracy
suite's cache (``dynadapter.bench.suite.cells``; the default recipe shares the suite's own cells, any other
gets cells of its own, ``-r<hash>``). The recipe chosen is the one with the best mean accuracy at
``balanced`` on the validation splits (where the modes are calibrated; the test splits never choose).
For every recipe the page also gives clean and shifted test accuracy at ``balanced`` and the FLOPs
saved, so that one sees whether the choice on validation carried over to test and to shifted images.
Flips are in no candidate: digits are not mirror-symmetric (a mirrored 2 is no 2), so ``hflip`` is a
per-task choice (``--train-arg hflip=0.5``). Every complete recipe is also judged by the accuracy suite's
targets (``suite.targets``: the paper's claim, the shifted split's, every exit at least the frozen probe at its
block) against the default recipe's static and probe cells of the same tasks and seeds. With several
PETL methods, each has its part of the page and the recipe is chosen on the mean of their validation
accuracies (`recipes_page`): the default recipe serves every method.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from statistics import fmean
from typing import Any

from dynadapter.bench.lab.results import markdown_table, pct
from dynadapter.bench.suite.aggregate import MODES, by_cell, cell_row, mean_row, probe_row
from dynadapter.bench.suite.flags import DEFAULT_EPOCHS, DEFAULT_TASKS, add_recipe_arguments, seed_list, suite_config
from dynadapter.bench.suite.rows import (
    CellResult,
    CombinedCell,
    RecipeMargin,
    RecipePoint,
    RecipesPage,
    RecipesSection,
    RecipeTargets,
    SuiteRow,
)
from dynadapter.bench.suite.targets import exit_target, shift_target, target
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
    # Exits that transfer (issue 34). LP-FT (Kumar et al., ICLR 2022): every exit head starts as the frozen
    # probe's logistic regression at its block, so that fine-tuning starts from features it need not distort.
    "lp-ft": {"head_init": "probe"},
    # WiSE-FT (Wortsman et al., CVPR 2022) on LP-FT: the trained weights interpolated back toward that start,
    # the coefficient chosen on validation.
    "wise-ft": {"head_init": "probe", "wise_ft": True},
    # the thresholds calibrated on the val images and a mildly corrupted copy of each (severities 1-2), so
    # that an exit's confidence is read on images like the ones a server sees.
    "shift-cal": {"calibration_corrupted": 1},
    # random heads whose norms start standardising their features on the train split (data-dependent
    # initialisation): a shallow stage's features vary little next to their offsets (training/head_init.py).
    "standardised": {"head_init": "standardised"},
    # both: the stronger middle exits leave more shifted images early, which corrupted copies in the
    # calibration set counter.
    "standardised-shift-cal": {"head_init": "standardised", "calibration_corrupted": 1},
}
#: Options of a recipe that the suite sets by its own flag (``--lr``), not by ``--train-arg``.
SUITE_FIELDS = ("lr",)
CUSTOM = "custom"
#: Standard errors of the difference by which a recipe must beat the first listed (the default) on
#: validation to be chosen: with 200 validation images a task, half a point on the suite mean is a
#: handful of images, which did not carry over to test (docs/results.md, "Training recipes").
CHOICE_Z = 1.0
#: Mean validation accuracies closer than this are a tie even without noise (every task at 100%):
#: equal image counts can average to floats 1e-16 apart (0.9099999999999999 against 0.91).
TIE = 1e-9


def _names_of(allowed: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of ``allowed`` names, each once, in the order given."""

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = sorted(set(names) - set(allowed))
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown or [text]}; choose from {', '.join(allowed)}")
        return list(dict.fromkeys(names))

    return parse


#: The PETL methods whose Dyn-Adapter cells a recipe trains.
PETL_METHODS = ("adapter", "lora", "repadapter")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipes",
        help="candidate training recipes on the suite's Dyn-Adapter cells, chosen on validation",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"(default: {','.join(DEFAULT_TASKS)})")
    p.add_argument(
        "--recipes",
        type=_names_of(list(RECIPES), "recipe(s)"),
        default=list(RECIPES),
        help=f"candidates (default: {','.join(RECIPES)}): "
        + "; ".join(f"{name}: {_options(options)}" for name, options in RECIPES.items())
        + f"; --train-arg adds one more, '{CUSTOM}'. The first listed is the baseline: another is chosen only "
        "where it beats it on validation beyond the noise of the validation images",
    )
    p.add_argument(
        "--petl",
        type=_names_of(PETL_METHODS, "PETL method(s)"),
        default=["adapter"],
        help=f"PETL methods, comma-separated, one of {', '.join(PETL_METHODS)} each (default: adapter); with "
        "several, the recipe is chosen on their mean",
    )
    p.add_argument("--seeds", type=seed_list, default=[0], help="training seeds (default: 0)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"per cell (default: {DEFAULT_EPOCHS})")
    add_recipe_arguments(p)


def candidates(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """name -> the recipe's options as the cells record them (`cells.recipe_options`; ``lr`` as given)."""
    from dynadapter.bench.suite import cells

    chosen = {
        name: {**cells.recipe_options(_train_args(RECIPES[name]).items()), **_suite_fields(RECIPES[name])}
        for name in args.recipes
    }
    if args.train_arg:
        custom = cells.recipe_options(args.train_arg)
        same = [name for name, recipe in chosen.items() if recipe == custom]
        if same:
            raise ConfigError(f"--train-arg gives the same recipe as {same[0]!r}: nothing to compare")
        chosen[CUSTOM] = custom
    return chosen


def run(args: argparse.Namespace) -> None:
    from dynadapter.bench.lab.results import update_results
    from dynadapter.bench.suite import cells
    from dynadapter.training.data import BUILTIN_DATASETS, BUILTIN_VAL_IMAGES

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(BUILTIN_DATASETS))
    if unknown or not tasks:
        raise ConfigError(f"--tasks {args.tasks}: the builtin data sets are {sorted(BUILTIN_DATASETS)}")
    base = suite_config(args, args.epochs)
    recipes = candidates(args)
    sections: dict[str, dict[str, Any]] = {}
    for petl in args.petl:
        todo = [cells.Cell(t, petl, cells.DYN, s) for s in args.seeds for t in tasks]
        # what the targets compare with: the default recipe's static and frozen-probe cells (never trained here)
        refs = [cells.Cell(t, p, v, s) for s in args.seeds for t in tasks for p, v in ((petl, "static"), REF_PROBE)]
        references = {(*c.key, c.seed): r for c, r in cells.run_suite(refs, base, set()).items()}
        results: dict[str, dict[tuple[str, int], dict[str, Any] | None]] = {}
        for name, recipe in recipes.items():
            config = dataclasses.replace(base, recipe=_train_args(recipe), **_suite_fields(recipe))
            found = cells.run_suite(todo, config, set() if args.report_only else set(todo))
            results[name] = {(c.task, c.seed): r for c, r in found.items()}
            sections[petl] = recipes_section(
                results, recipes, tasks, petl, args.seeds, base.record(todo[0]), BUILTIN_VAL_IMAGES, references
            )
            update_results(args.docs, {"recipes": recipes_page(list(sections.values()))})
    print(render_markdown({"recipes": recipes_page(list(sections.values()))}))


def _suite_fields(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's options that the suite sets by its own flags (``SUITE_FIELDS``: `SuiteConfig` fields)."""
    return {k: v for k, v in recipe.items() if k in SUITE_FIELDS}


def _train_args(recipe: dict[str, Any]) -> dict[str, Any]:
    """The rest: options as ``--train-arg`` gives them."""
    return {k: v for k, v in recipe.items() if k not in SUITE_FIELDS}


def recipe_point(result: dict[str, Any], mode: str = "balanced") -> dict[str, float | None]:
    """A Dyn-Adapter cell at ``mode``: validation (clean images), test and shifted-test accuracy, FLOPs saved."""
    cell = CellResult.model_validate(result)
    return {
        "val_acc": cell.val_modes[mode].acc,
        "acc": cell.modes[mode].acc,
        "shifted_acc": cell.shifted.modes[mode].acc,
        "saved": cell.modes[mode].saved,
    }


def mode_means(per_cell: dict[tuple[str, int], dict[str, Any] | None], tasks: list[str]) -> dict[str, Any]:
    """Every mode's `recipe_point`, the mean over ``tasks`` of the means over the seeds (every cell finished)."""
    out = {}
    for mode in MODES:
        per_task = [[recipe_point(r, mode) for (t, _), r in per_cell.items() if t == task and r] for task in tasks]
        out[mode] = {k: fmean(fmean(p[k] for p in points) for points in per_task) for k in per_task[0][0]}
    return out


#: The frozen probe's cells, (petl, variant), as the accuracy suite names them.
REF_PROBE = ("none", "probe")


def recipe_targets(
    per_cell: dict[tuple[str, int], dict[str, Any] | None],
    references: dict[tuple[str, str, str, int], dict[str, Any] | None],
    tasks: list[str],
    petl: str,
) -> dict[str, Any] | None:
    """The accuracy suite's targets (`suite.targets`) for one recipe's Dyn-Adapter cells against the default
    recipe's static and probe cells of the same tasks and seeds; None while a reference cell is missing."""
    if any(r is None for r in references.values()):
        return None
    runs = {(t, petl, "dyn", s): r for (t, s), r in per_cell.items()} | references
    lookup = {key: CombinedCell.model_validate(c) if c else None for key, c in by_cell(runs).items()}
    rows = [cell_row(t, petl, lookup[t, petl, "static"], lookup[t, petl, "dyn"]) for t in tasks]
    mean = mean_row(petl, [SuiteRow.model_validate(r) for r in rows])
    probes = {t: lookup[(t, *REF_PROBE)] for t in tasks}
    probe_rows = [probe_row(t, probes[t]) for t in tasks]
    return {
        "claim": target(mean, len(tasks)),
        "shift": shift_target(mean, probe_rows, len(tasks), rows),
        "exits": exit_target(petl, rows, probes),
    }


def recipes_section(
    results: dict[str, dict[tuple[str, int], dict[str, Any] | None]],
    recipes: dict[str, dict[str, Any]],
    tasks: list[str],
    petl: str,
    seeds: list[int],
    config: dict[str, Any],
    val_images: int,
    references: dict[tuple[str, str, str, int], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """One PETL method's part of ``recipes`` in results.json: per recipe the mean over tasks of the means
    over seeds (with ``val_se``, its validation accuracy's standard error on ``val_images`` a task and seed;
    every mode's means and, given the ``references`` (`recipe_targets`), the targets' verdicts), and the
    recipe chosen on validation among those whose every cell (task x seed) finished (None until one
    has): the first listed of those within noise of the best (``within_noise_of_best``). A task's
    numbers are shown once one seed has finished; ``missing`` lists the cells that have not."""
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
    # a recipe with no finished cell was not run for this method: named apart, not listed as unfinished
    not_run = [r["recipe"] for r in rows if all(p is None for p in r["tasks"].values())]
    rows = [r for r in rows if r["recipe"] not in not_run]
    for row in rows:
        row["val_se"] = val_standard_error(row["tasks"], len(seeds), val_images) if row["complete"] else None
        if row["complete"]:
            per_cell = results[row["recipe"]]
            row["modes"] = mode_means(per_cell, tasks)
            row["targets"] = recipe_targets(per_cell, references, tasks, petl) if references else None
    tied, margin = within_noise_of_best([r for r in rows if r["complete"]])
    return {
        "tasks": tasks,
        "petl": petl,
        "seeds": list(seeds),
        "config": config,
        "rows": rows,
        "not_run": not_run,
        "val_images": val_images,
        "chosen": tied[0] if tied else None,
        "tied": tied[1:],
        "margin": margin,
    }


def recipes_page(sections: list[dict[str, Any]]) -> dict[str, Any]:
    """``recipes`` of results.json: every PETL method's section (`recipes_section`) and the recipe chosen over
    them: with one method its own choice; with several, `within_noise_of_best` on the mean over the methods
    of each recipe's suite-mean validation accuracy (standard error: the methods' combined, sqrt(sum se^2) / M),
    among the recipes complete for every method (the default serves them all)."""
    if len(sections) == 1:
        one = sections[0]
        return {"sections": sections, "chosen": one["chosen"], "tied": one["tied"], "margin": one["margin"]}
    rows = [{r["recipe"]: r for r in section["rows"]} for section in sections]
    pooled = []
    for name in rows[0]:
        per_method = [by_name.get(name) for by_name in rows]
        if all(r is not None and r["complete"] for r in per_method):
            val = fmean(r["mean"]["val_acc"] for r in per_method)
            se = sum(r["val_se"] ** 2 for r in per_method) ** 0.5 / len(per_method)
            pooled.append({"recipe": name, "mean": {"val_acc": val}, "val_se": se})
    tied, margin = within_noise_of_best(pooled)
    return {"sections": sections, "chosen": tied[0] if tied else None, "tied": tied[1:], "margin": margin}


def val_standard_error(per_task: dict[str, dict[str, float] | None], seeds: int, val_images: int) -> float:
    """Binomial standard error of a recipe's suite-mean validation accuracy (a fraction): the mean over
    T tasks of accuracies p_t on ``val_images`` x ``seeds`` images each, sqrt(sum p_t (1 - p_t) / (n S)) / T."""
    accs = [p["val_acc"] for p in per_task.values() if p is not None]
    return (sum(a * (1.0 - a) for a in accs) / (val_images * seeds)) ** 0.5 / len(accs)


def within_noise_of_best(finished: list[dict[str, Any]]) -> tuple[list[str], dict[str, float]]:
    """The recipes whose suite-mean validation accuracy is within ``CHOICE_Z`` standard errors of the
    difference to the best one's (in the order listed, so that the first listed -- the default --
    wins unless another beats it beyond the noise of the validation images), and ``margin``: the best
    recipe, the first listed one's ``difference`` to it and the ``band`` that difference is judged
    against (fractions)."""
    if not finished:
        return [], {}
    best = max(finished, key=lambda r: r["mean"]["val_acc"])

    def gap(r: dict[str, Any]) -> tuple[float, float]:
        se = (best["val_se"] ** 2 + r["val_se"] ** 2) ** 0.5
        return best["mean"]["val_acc"] - r["mean"]["val_acc"], max(CHOICE_Z * se, TIE)

    tied = [r["recipe"] for r in finished if gap(r)[0] <= gap(r)[1]]
    first = next(r for r in finished if r["recipe"] == tied[0])
    difference, band = gap(first)
    return tied, {"best": best["recipe"], "difference": difference, "band": band}


def _options(options: dict[str, Any]) -> str:
    """A recipe's options as ``--train-arg`` takes them (lists comma-separated)."""
    if not options:
        return "dynadapter train's defaults"
    text = {k: ",".join(f"{x:g}" for x in v) if isinstance(v, list) else v for k, v in options.items()}
    return ", ".join(f"{k}={v}" for k, v in text.items())


def _point(p: RecipePoint | None) -> list[str]:
    if p is None:
        return ["missing"] * 4
    return [f"{100 * acc:.1f}" for acc in (p.val_acc, p.acc, p.shifted_acc)] + [f"{100 * p.saved:.0f}%"]


def _noise_note(chosen: str | None, tied: list[str] | None, margin: RecipeMargin | None, val_images: int | None) -> str:
    """Why the chosen recipe is chosen where another one is as good or better on validation."""
    if not tied:
        return ""
    if margin is None or margin.best == chosen:
        return f" (tied with {', '.join(tied)}; the first listed is kept)"
    return (
        f" (within noise of {', '.join(tied)}: {margin.best} leads it by {100 * margin.difference:.2f} "
        f"points of suite-mean validation accuracy, within {CHOICE_Z:g} standard error of the difference, "
        f"{100 * margin.band:.2f} points on {val_images} validation images a task and seed; "
        "the first listed is kept unless another beats it beyond that)"
    )


def _verdict(
    chosen: str | None,
    tied: list[str] | None,
    margin: RecipeMargin | None,
    val_images: int | None,
    lead: str = "Chosen on validation",
) -> str:
    """The choice's sentence, opening with ``lead`` (whose choice: the page's, or one method's alone)."""
    if not chosen:
        return "No recipe has finished every task yet: none is chosen."
    return f"{lead}: **{chosen}**{_noise_note(chosen, tied, margin, val_images)}."


def render_markdown(results: dict[str, Any]) -> str:
    """The recipes section of docs/results.md (empty when results.json has none): with several PETL methods,
    the choice over them, then each method's part."""
    if not results.get("recipes"):
        return ""
    page = RecipesPage.model_validate(results["recipes"])
    if len(page.sections) == 1:
        return "## Training recipes\n\n" + render_section(page.sections[0])
    methods = ", ".join(f"`{s.petl}`" for s in page.sections)
    val_images = page.sections[0].val_images
    over = f"Chosen on validation over {methods} (the mean of their suite-mean accuracies)"
    choice = _verdict(page.chosen, page.tied, page.margin, val_images, over)
    parts = [f"### {s.petl}\n\n" + render_section(s, alone=False) for s in page.sections]
    return "## Training recipes\n\n" + choice + "\n\n" + "\n\n".join(parts)


def render_section(section: RecipesSection, alone: bool = True) -> str:
    """One PETL method's recipes: balanced per task, every mode, the targets; ``alone``: the only method, whose
    own choice is the page's (else it is said as this method's alone)."""
    c = section.config
    lines = ["| recipe | options | task | balanced val (%) | balanced test (%) | balanced shifted (%) | FLOPs saved |"]
    lines.append("|" + " --- |" * 7)
    chosen = section.chosen
    for r in section.rows:
        name = (
            r.recipe
            if r.recipe != chosen
            else f"**{r.recipe}** (chosen" + ("" if alone else f" on `{section.petl}` alone") + ")"
        )
        lines.append(f"| {name} | {_options(r.options)} | mean | " + " | ".join(_point(r.mean)) + " |")
        lines += [f"| | | {t} | " + " | ".join(_point(p)) + " |" for t, p in r.tasks.items()]
    missing = [f"{r.recipe}: {', '.join(r.missing)}" for r in section.rows if r.missing]
    lead = "Chosen on validation" if alone else f"On `{section.petl}` alone, chosen on validation"
    verdict = _verdict(chosen, section.tied, section.margin, section.val_images, lead)
    return (
        f"`dynadapter bench recipes`: Dyn-Adapter with `{section.petl}`, backbone `{c.backbone}` at "
        f"{c.img_size} px, {c.epochs} epoch{'s' if c.epochs != 1 else ''}, seeds "
        f"{', '.join(map(str, section.seeds))} (means), the "
        "same cells as the accuracy suite's under each recipe. `balanced` on the validation split (where its "
        "threshold is calibrated; the only split that chooses), the test split and its shifted copy. "
        f"{verdict}\n\n"
        + "\n".join(lines)
        + ("\n\nCells not finished: " + "; ".join(missing) if missing else "")
        + (f"\n\nNot run with `{section.petl}`: {', '.join(section.not_run)}." if section.not_run else "")
        + render_modes(section)
        + render_targets(section)
    )


def render_modes(section: RecipesSection) -> str:
    """Every mode of every complete recipe: val / test / shifted test (%), FLOPs saved (empty without any)."""
    rows = [r for r in section.rows if r.modes]
    if not rows:
        return ""
    lines = [
        [
            r.recipe,
            *(
                f"{pct(m.val_acc)} / {pct(m.acc)} / {pct(m.shifted_acc)} / {pct(m.saved, 0)}%"
                for m in (r.modes[name] for name in MODES)
            ),
        ]
        for r in rows
        if r.modes
    ]
    return (
        "\n\nEvery mode, suite mean: validation (clean images) / test / shifted test accuracy (%) / FLOPs saved. "
        "A recipe that calibrates on corrupted copies too (`calibration_corrupted`) chooses its thresholds on "
        "those as well; its validation column is still the clean images'.\n\n"
        + markdown_table(["recipe", *MODES], lines)
    )


def render_targets(section: RecipesSection) -> str:
    """The targets of every complete recipe, against the default recipe's static and probe cells."""
    rows = [(r.recipe, r.targets) for r in section.rows if r.targets]
    if not rows:
        return ""
    lines = [[name, *_target_cells(t)] for name, t in rows]
    return (
        f"\n\nThe accuracy suite's targets for `{section.petl}` under each recipe, over these tasks and seeds, against "
        "the default recipe's static and frozen-probe cells: `balanced` within 0.5 points of static with at least "
        "50% of its FLOPs saved; on the shifted split at least 2 points over the probe at its best block and at "
        "most 1 point more clean-to-shifted loss than static; every exit at least the probe's head after the same "
        "block, clean and shifted (the lowest margin). In points.\n\n"
        + markdown_table(
            [
                "recipe",
                "balanced − static, saved",
                "shifted: over the probe",
                "extra clean-to-shifted loss",
                "lowest exit − probe, clean / shifted",
                "targets met",
            ],
            lines,
        )
    )


def _target_cells(t: RecipeTargets) -> list[str]:
    claim, shift, exits = t.claim, t.shift, t.exits

    def points(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:+.2f}"

    margins = [
        min((d - p for d, p in zip(dyn, probe, strict=True)), default=None)
        for dyn, probe in ((exits.dyn, exits.probe), (exits.dyn_shifted, exits.probe_shifted))
    ]
    met = [name for name, v in (("claim", claim.met), ("shifted", shift.met), ("exits", exits.met)) if v]
    saved = "—" if claim.saved is None else f"{pct(claim.saved, 0)}%"
    return [
        f"{points(claim.acc_delta)}, {saved}",
        points(shift.over_probe),
        points(shift.extra_loss),
        " / ".join(points(m) for m in margins),
        f"{len(met)} of 3" + (f" ({', '.join(met)})" if met else ""),
    ]
