"""The flags every suite of cells shares (``bench accuracy``, ``fewshot``, ``recipes``): the training recipe,
the cell cache, the backbone, and the ``cells.SuiteConfig`` they make."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dynadapter.options import key_value
from dynadapter.training.options import TrainOptions

DEFAULT_TASKS = ("digits", "mnist", "elpv", "elpv-type")
#: Eight epochs per cell with bfloat16 autocast (``--amp``), so that the suite (52 cells with
#: --ablation) fits about 2 h on the 2-core CPU machine at 112 px. There, on a CPU with AVX512-BF16,
#: a training step of Dyn-Adapter at batch 32 took 0.46 s with autocast against 1.27 s in float32
#: (2.7x). The whole suite took 104 min there (a cell: 105 s static, 126 s Dyn-Adapter on average,
#: calibration and the float32 test evaluation included). The paper trains 100 epochs; the demo, 10.
DEFAULT_EPOCHS = 8
#: ``dynadapter train``'s own recipe (batch size, AdamW learning rate, warm-up), read from its
#: options: the suite measures what a user gets from the defaults.
DEFAULT_BATCH_SIZE, DEFAULT_LR, WARMUP_EPOCHS = (
    TrainOptions.model_fields[name].default for name in ("batch_size", "lr", "warmup_epochs")
)


def seed_list(text: str) -> list[int]:
    """``0,1,2`` -> [0, 1, 2] (distinct non-negative integers, in the order given)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative integers, e.g. 0,1,2; got {text!r}")
    return seeds


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
    from dynadapter.bench.suite import cells

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
