"""``dynadapter bench accuracy``: Dyn-Adapter against its static PETL baselines on the downstream suite.

Every task x every PETL method x {static, Dyn-Adapter} (and, with ``--ablation``, Dyn-Adapter with one
part switched off at a time), and the frozen probe of every task, is one cached training run per seed
(``--seeds``, default 0,1,2); each is evaluated on the test split and on its shifted copy, and each
Dyn-Adapter cell is also served in int8 (``--int8``, ``dynadapter.bench.suite.int8_column``). The
results (means over the seeds ± std) go to docs/results.json, docs/results.md and one figure per
task in docs/results/. See ``dynadapter.bench.suite.cells`` for the cache, ``suite.aggregate`` and
``suite.targets`` for what the page states and ``suite.page`` for how.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from dynadapter.bench.suite.flags import (
    DEFAULT_EPOCHS,
    DEFAULT_TASKS,
    add_recipe_arguments,
    seed_list,
    suite_config,
)
from dynadapter.bench.suite.page import RESULT_KEYS, render_markdown
from dynadapter.errors import ConfigError

__all__ = ["RESULT_KEYS", "add_parser", "render_markdown", "run"]

#: In this order the cells run: the linear probe (none, static) early, as it tells how hard each task is.
METHODS = ("adapter", "none", "lora", "repadapter")
#: Three seeds a cell (issue 19): the page reports mean ± std, and the target is judged on the mean.
DEFAULT_SEEDS = (0, 1, 2)


def suite_plan(probe_petl: str) -> dict[str, int]:
    """Cells of each kind in the default suite (every default task, PETL method and seed; no
    ablation), whose projected time the page sets against issue 19's 4-hour budget; ``probe_petl``:
    the method that stands for the frozen probe, which has no static and dynamic cells."""
    runs = len(DEFAULT_TASKS) * len(DEFAULT_SEEDS)
    adapted = sum(m != probe_petl for m in METHODS)
    return {"probe": runs, "static": runs * adapted, "dynamic": runs * adapted}


def _names(choices: Sequence[str] | None = None) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if choices is not None and n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {list(choices or [])}, got {text!r}"
            )
        return names

    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "accuracy",
        help="accuracy / FLOPs of every PETL method, static and dynamic, on the suite",
        description=__doc__.splitlines()[0],
    )
    p.add_argument(
        "--tasks",
        type=_names(),
        default=list(DEFAULT_TASKS),
        help=f"builtin data sets (default: {','.join(DEFAULT_TASKS)})",
    )
    p.add_argument(
        "--methods",
        type=_names(METHODS),
        default=list(METHODS),
        help=f"PETL methods (default: {','.join(METHODS)}; none = heads on the frozen backbone)",
    )
    p.add_argument(
        "--seeds",
        type=seed_list,
        default=list(DEFAULT_SEEDS),
        help=f"training seeds, one run of every cell each (default: {','.join(map(str, DEFAULT_SEEDS))})",
    )
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"per cell (default: {DEFAULT_EPOCHS})")
    p.add_argument(
        "--ablation",
        action="store_true",
        help="also train the ablation cells (Dyn-Adapter with adapter, one part off at a time)",
    )
    p.add_argument(
        "--ablations",
        type=_names(),
        help="the ablation variants --ablation trains, comma-separated (default: all: linear-heads, equal-weights, "
        "no-forward-sparsity, no-backward-sparsity, distill)",
    )
    p.add_argument(
        "--ablation-seeds",
        type=seed_list,
        help="seeds of the ablation cells, and of the 'every part on' row they are compared with (default: --seeds)",
    )
    p.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also export every Dyn-Adapter cell in int8 (NNCF, OpenVINO) and serve its test split at the int8 "
        "modes: the results' int8 column (default: on)",
    )
    add_recipe_arguments(p)


def run(args: argparse.Namespace) -> None:
    from dynadapter.bench.lab.figures import plot_task
    from dynadapter.bench.lab.results import update_results
    from dynadapter.bench.suite import cells
    from dynadapter.bench.suite.aggregate import by_cell, sections
    from dynadapter.bench.suite.page import result_table
    from dynadapter.training.data import BUILTIN_DATASETS

    unknown = sorted(set(args.tasks) - set(BUILTIN_DATASETS))
    if unknown:
        raise ConfigError(f"unknown tasks {unknown}; the builtin data sets are {sorted(BUILTIN_DATASETS)}")
    config = suite_config(args, args.epochs, int8=args.int8)
    main = cells.main_cells(args.tasks, args.methods, args.seeds)
    variants = args.ablations or list(cells.ABLATIONS)
    if set(variants) - set(cells.ABLATIONS):
        raise ConfigError(f"--ablations {','.join(variants)}: the variants are {','.join(cells.ABLATIONS)}")
    ablation_seeds = args.ablation_seeds or args.seeds
    ablation = cells.ablation_cells(args.tasks, ablation_seeds, variants)
    trainable = set() if args.report_only else set(main) | (set(ablation) if args.ablation else set())
    # The page's recipe is the trained cells' one: the frozen probe's cells (first in `main`) lay out
    # their run in PROBE_EPOCHS and would misreport the epochs.
    trained_cell = next(c for c in main if c.variant != cells.PROBE)

    def publish(results: cells.Results) -> dict[str, Any]:
        runs = {(*c.key, c.seed): r for c, r in results.items()}
        lookup = by_cell(runs)
        for task in args.tasks:
            dynamic = {p: lookup[task, p, "dyn"] for p in args.methods if lookup[task, p, "dyn"]}
            static = {p: lookup[task, p, "static"] for p in args.methods if lookup[task, p, "static"]}
            probe = lookup[task, cells.PROBE_PETL, cells.PROBE]
            if dynamic or static or probe:
                plot_task(task, args.methods, dynamic, static, args.docs / "results" / f"{task}.png", probe)
        return update_results(
            args.docs,
            sections(
                runs,
                args.tasks,
                args.methods,
                {v: label for v, (label, _) in cells.ABLATIONS.items() if v in variants},
                cells.ABLATION_PETL,
                {**config.record(trained_cell), "seeds": list(args.seeds)},
                (cells.PROBE_PETL, cells.PROBE),
                suite_plan(cells.PROBE_PETL),
                ablation_seeds,
            ),
        )

    results = publish(cells.run_suite(main + ablation, config, trainable, publish))
    print(result_table(results))
    print(f"\nwritten: {args.docs / 'results.md'}, {args.docs / 'results.json'}, {args.docs / 'results'}/*.png")
