"""``dynadapter bench accuracy``: Dyn-Adapter against its static PETL baselines on the downstream suite.

Every task x every PETL method x {static, Dyn-Adapter} (and, with ``--ablation``, Dyn-Adapter with one
part switched off at a time), and the frozen probe of every task, is one cached training run per seed
(``--seeds``, default 0,1,2); each is evaluated on the test split and on its shifted copy, and each
Dyn-Adapter cell is also served in int8 (``--int8``, ``dynadapter.bench.int8_column``). The
results (means over the seeds ± std) go to docs/results.json, docs/results.md and one figure per
task in docs/results/. See ``dynadapter.bench.cells`` for the cache
and ``dynadapter.bench.summary`` for what the page states.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dynadapter.bench.summary import RESULT_KEYS, render_markdown
from dynadapter.errors import ConfigError
from dynadapter.options import key_value
from dynadapter.training.options import TrainOptions

__all__ = ["RESULT_KEYS", "add_parser", "render_markdown", "run"]

DEFAULT_TASKS = ("digits", "mnist", "elpv", "elpv-type")
#: In this order the cells run: the linear probe (none, static) early, as it tells how hard each task is.
METHODS = ("adapter", "none", "lora", "repadapter")
#: Eight epochs per cell with bfloat16 autocast (``--amp``), so that the suite (52 cells with
#: --ablation) fits about 2 h on the 2-core CPU machine at 112 px. There, on a CPU with AVX512-BF16,
#: a training step of Dyn-Adapter at batch 32 took 0.46 s with autocast against 1.27 s in float32
#: (2.7x). The whole suite took 104 min there (a cell: 105 s static, 126 s Dyn-Adapter on average,
#: calibration and the float32 test evaluation included). The paper trains 100 epochs; the demo, 10.
DEFAULT_EPOCHS = 8
#: Three seeds a cell (issue 19): the page reports mean ± std, and the target is judged on the mean.
DEFAULT_SEEDS = (0, 1, 2)
#: ``dynadapter train``'s own recipe (batch size, AdamW learning rate, warm-up), read from its
#: options: the suite measures what a user gets from the defaults.
DEFAULT_BATCH_SIZE, DEFAULT_LR, WARMUP_EPOCHS = (
    TrainOptions.model_fields[name].default for name in ("batch_size", "lr", "warmup_epochs")
)


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


def seed_list(text: str) -> list[int]:
    """``0,1,2`` -> [0, 1, 2] (distinct non-negative integers, in the order given)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative integers, e.g. 0,1,2; got {text!r}")
    return seeds


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
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also export every Dyn-Adapter cell in int8 (NNCF, OpenVINO) and serve its test split at the int8 "
        "modes: the results' int8 column (default: on)",
    )
    add_recipe_arguments(p)


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """The flags every suite of cells shares (accuracy, fewshot): the recipe, the cache, the backbone."""
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"AdamW learning rate (default: {DEFAULT_LR})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"(default: {DEFAULT_BATCH_SIZE})")
    p.add_argument("--img-size", type=int, help="input resolution (default: dynadapter train's)")
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bfloat16 autocast in training (default: on where this machine has bfloat16 instructions or a GPU; "
        "calibration and evaluation stay float32)",
    )
    p.add_argument(
        "--workers", type=int, help="DataLoader workers per cell (default: dynadapter train's; 0 suits builtin data)"
    )
    p.add_argument(
        "--device",
        default="auto",
        help="where cells train: auto (the GPU when CUDA is usable), cpu, cuda or cuda:N; cells finished "
        "elsewhere are kept, and the page names each cell's device (default: auto)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rewrite the results page from the finished cells (a finished cell still gets "
        "what the code has added since it ran, e.g. the shifted split or the int8 column, evaluated without training)",
    )
    p.add_argument("--root", type=Path, default=Path("var/bench"), help="cell cache (default: var/bench)")
    p.add_argument("--docs", type=Path, default=Path("docs"), help="where results.{json,md} go (default: docs)")
    p.add_argument(
        "--records",
        type=Path,
        help="where each finished cell's result is also kept, to be committed: a cell found there counts as "
        "finished where its run directory under --root is absent, so a fresh clone re-renders the page and "
        "a suite continues on another machine (default: DOCS/results/cells)",
    )
    p.add_argument("--backbone", help="timm ViT name or builtin:<name> (default: dynadapter train's)")
    p.add_argument(
        "--backbone-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=key_value,
        help="extra timm.create_model argument (repeatable), e.g. depth=4",
    )
    p.add_argument(
        "--train-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=key_value,
        help="a dynadapter train option of every cell (repeatable), e.g. hflip=0.5, auto_augment=rand-m9-mstd0.5, "
        "crop_scale=0.35,1, mixup=0.8, smoothing=0.1, head_dropout=0.1; a recipe that differs from the "
        "defaults gets cells of its own (-r<hash>)",
    )


def suite_config(args: argparse.Namespace, epochs: int, steps: int | None = None, int8: bool = False) -> Any:
    """The `cells.SuiteConfig` of the recipe flags (`add_recipe_arguments`); ``int8``: the int8 column."""
    from dynadapter.bench import cells

    return cells.SuiteConfig(
        args.root,
        epochs,
        args.lr,
        WARMUP_EPOCHS,
        args.batch_size,
        cells.bf16_autocast_is_fast() if args.amp is None else args.amp,
        args.img_size,
        args.backbone,
        dict(args.backbone_arg),
        steps=steps,
        workers=args.workers,
        recipe=cells.recipe_options(args.train_arg),
        int8=int8,
        device=args.device,
        records=args.records or args.docs / "results" / "cells",
    )


def run(args: argparse.Namespace) -> None:
    from dynadapter.bench import cells, summary
    from dynadapter.bench.figures import plot_task
    from dynadapter.bench.results import update_results
    from dynadapter.training.data import BUILTIN_DATASETS

    unknown = sorted(set(args.tasks) - set(BUILTIN_DATASETS))
    if unknown:
        raise ConfigError(f"unknown tasks {unknown}; the builtin data sets are {sorted(BUILTIN_DATASETS)}")
    config = suite_config(args, args.epochs, int8=args.int8)
    main = cells.main_cells(args.tasks, args.methods, args.seeds)
    ablation = cells.ablation_cells(args.tasks, args.seeds)
    trainable = set() if args.report_only else set(main) | (set(ablation) if args.ablation else set())
    # The page's recipe is the trained cells' one: the frozen probe's cells (first in `main`) lay out
    # their run in PROBE_EPOCHS and would misreport the epochs.
    trained_cell = next(c for c in main if c.variant != cells.PROBE)

    def publish(results: cells.Results) -> dict[str, Any]:
        runs = {(*c.key, c.seed): r for c, r in results.items()}
        lookup = summary.by_cell(runs)
        for task in args.tasks:
            dynamic = {p: lookup[task, p, "dyn"] for p in args.methods if lookup[task, p, "dyn"]}
            static = {p: lookup[task, p, "static"] for p in args.methods if lookup[task, p, "static"]}
            probe = lookup[task, cells.PROBE_PETL, cells.PROBE]
            if dynamic or static or probe:
                plot_task(task, args.methods, dynamic, static, args.docs / "results" / f"{task}.png", probe)
        return update_results(
            args.docs,
            summary.sections(
                runs,
                args.tasks,
                args.methods,
                {v: label for v, (label, _) in cells.ABLATIONS.items()},
                cells.ABLATION_PETL,
                {**config.record(trained_cell), "seeds": list(args.seeds)},
                (cells.PROBE_PETL, cells.PROBE),
                suite_plan(cells.PROBE_PETL),
            ),
        )

    results = publish(cells.run_suite(main + ablation, config, trainable, publish))
    print(summary.result_table(results))
    print(f"\nwritten: {args.docs / 'results.md'}, {args.docs / 'results.json'}, {args.docs / 'results'}/*.png")
