"""Training's subcommands: `train`, `eval`, `calibrate`, `backbone fetch`.

Parsers are built without torch (the serving image runs `dynadapter` too); each command imports
what it needs when it runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from dynadapter import options
from dynadapter.errors import ConfigError
from dynadapter.training.options import TrainOptions


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train PETL + exit heads on a frozen ViT; writes a run directory")
    options.add_arguments(p, TrainOptions)


def run_train(args: argparse.Namespace) -> None:
    """Train; Ctrl-C ends with status 130 and SIGTERM with 143 (as a shell reports them), without a
    traceback, once the run's pixel caches are removed."""
    from dynadapter.training.trainer import train

    try:
        out = train(train_options(args))
    except KeyboardInterrupt:
        print("dynadapter train: interrupted (SIGINT); the run's pixel caches are removed", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    print(f"run written to {out}")
    print_exit_health(out)


def print_exit_health(run_dir: Path) -> None:
    """The run's summary of deep exits that lose to earlier ones on validation (calibration.json's
    ``exit_health``; training/exit_health.py), repeated from the log where it would scroll away."""
    from dynadapter.training import run_dir as rd
    from dynadapter.training.exit_health import warning_lines

    if rd.has_calibration(run_dir):  # a run with an empty val split is not calibrated
        for line in warning_lines(rd.read_calibration(run_dir).get("exit_health", {})):
            print(f"warning: {line}")


def train_options(args: argparse.Namespace) -> TrainOptions:
    """The options of ``dynadapter train``: the flags given, or with ``--resume RUN_DIR`` the ones that
    run recorded. `--data` and `--out` have no default: this says so, in one line, not pydantic."""
    if getattr(args, "resume", None) is not None:
        from dynadapter.training.run_dir import read_config

        recorded = read_config(args.resume).train.record()
        return TrainOptions(**{**recorded, "resume": args.resume, "out": args.resume})
    missing = [f"--{name}" for name in ("data", "out") if not hasattr(args, name)]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} required (or --resume RUN_DIR to continue a run)")
    return options.from_args(TrainOptions, args)


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="per-exit accuracy and accuracy/FLOPs on a split")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data", help="data set (default: the one trained on)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        type=Path,
        metavar="RUN_DIR",
        help="another run (e.g. trained with --static) to plot as a point (repeatable)",
    )


def run_eval(args: argparse.Namespace) -> None:
    from dynadapter.training.calibration import spread_text
    from dynadapter.training.evaluate import REPORT_THRESHOLDS, evaluate_run, report_name
    from dynadapter.training.exit_health import warning_lines
    from dynadapter.training.run_dir import read_config

    r = evaluate_run(args.run_dir, args.data, args.split, args.baseline)
    print(f"{r['data']}: {r['split']} split, {r['num_samples']} images")
    print("exit  after_block  cum_GFLOPs  accuracy")
    for k, (blk, g, a) in enumerate(zip(r["exits"], r["cumulative_gflops"], r["exit_accuracy"], strict=True)):
        print(f"{k:>4}  {blk:>11}  {g:>10.4f}  {a:>8.4f}")
    for line in warning_lines(r["exit_health"]):
        print(f"warning: {line}")
    print("\nthreshold  accuracy  GFLOPs  FLOPs%  exit fractions")
    rows = {round(row["threshold"], 6): row for row in r["sweep"]}
    for t in REPORT_THRESHOLDS:
        row = rows[t]
        fr = " ".join(f"{f:.2f}" for f in row["exit_fractions"])
        print(f"{t:>9.2f}  {row['accuracy']:>8.4f}  {row['gflops']:>6.3f}  {100 * row['flops_fraction']:>5.1f}  {fr}")
    for name, row in r["modes"].items():
        val = r.get("calibrated", {}).get(name, {})
        print(
            f"mode {name:<8} threshold {row['threshold']:.4f}: accuracy {row['accuracy']:.4f}"
            + (f" (val {val.get('val_accuracy', val['accuracy']):.4f})" if "accuracy" in val else "")
            + f", {100 * row['flops_fraction']:.1f}% of full FLOPs"
        )
        if spread_text(val):
            print(f"              {spread_text(val)}")
    for name, point in r["baselines"].items():
        print(f"baseline {name}: accuracy {point['accuracy']:.4f} at {point['gflops']:.4f} GFLOPs")
    stem = args.run_dir / report_name(read_config(args.run_dir), args.data, args.split)
    print(f"\nwritten: {stem}.json and the plot {stem}.png")


def add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="calibrate a trained run again on its validation split")
    p.add_argument("run_dir", type=Path)


def run_calibrate(args: argparse.Namespace) -> None:
    from dynadapter.training.calibration import spread_text
    from dynadapter.training.calibration_set import mode_text
    from dynadapter.training.evaluate import recalibrate_run

    result = recalibrate_run(args.run_dir)
    for name, mode in result["modes"].items():
        print(mode_text(name, mode, result["calibration"]))
        if spread_text(mode):
            print(f"         {spread_text(mode)}")
    print_exit_health(args.run_dir)


def add_backbone(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backbone", help="builtin backbones")
    bsub = p.add_subparsers(dest="backbone_cmd", required=True)
    f = bsub.add_parser("fetch", help="obtain, convert and cache a builtin backbone")
    f.add_argument("name", help="e.g. dinov2-s14")
    f.add_argument("--cache-dir", type=Path)


def run_backbone(args: argparse.Namespace) -> None:
    from dynadapter.training.backbones import fetch_builtin_backbone

    print(fetch_builtin_backbone(args.name, args.cache_dir))


COMMANDS = {
    "train": (add_train, run_train),
    "eval": (add_eval, run_eval),
    "calibrate": (add_calibrate, run_calibrate),
    "backbone": (add_backbone, run_backbone),
}
