"""``dynadapter``: train, evaluate, export, serve, fetch the builtin backbone (SPEC §4).

Heavy imports (torch, timm, onnxruntime) happen inside each command, so ``dynadapter serve`` runs
in the serving image, which has neither torch nor timm.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.bench import add_bench, run_bench


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def _key_values(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, VALUE parsed as JSON when it parses (numbers, booleans), else a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train PETL + exit heads on a frozen ViT; writes a run directory")
    p.add_argument("--data", required=True, help="image folder (DATA/train/<class>/...) or builtin:<name>")
    p.add_argument("--out", required=True, type=Path, help="run directory to write")
    p.add_argument("--backbone", default="builtin:dinov2-s14", help="timm ViT name or builtin:<name>")
    p.add_argument("--backbone-weights", help="local safetensors file with timm key names")
    p.add_argument("--pretrained", action="store_true",
                   help="timm's own pretrained weights for a timm model name (needs a reachable model hub)")
    p.add_argument("--backbone-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra timm.create_model argument (repeatable), e.g. depth=4")
    p.add_argument("--petl", choices=["adapter", "lora", "repadapter", "none"], default="adapter")
    p.add_argument("--petl-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="PETL config option (repeatable), e.g. dim=8 or scale=0.5")
    p.add_argument("--exits", type=_int_list, help="blocks after which exits sit (default: every quarter)")
    p.add_argument("--heads", default="balanced",
                   help="balanced | linear | one kind[:n] per exit, e.g. transformer:1,mlp:2,mlp:1,linear")
    p.add_argument("--static", action="store_true", help="baseline: the final exit only")
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loss-gamma", type=float, default=2.0,
                   help="adaptive prioritization strength (0 = fixed equal exit weights)")
    p.add_argument("--distill", type=float, default=0.0, help="self-distillation weight (0 = off)")
    p.add_argument("--forward-sparsity", type=float, default=0.2, help="dropout of the shallowest stage")
    p.add_argument("--backward-sparsity", type=float, default=0.1, help="fraction of gradient entries zeroed")
    p.add_argument("--device", default="auto",
                   help="auto (the GPU when CUDA is usable, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true",
                   help="mixed-precision training (autocast); calibration, checkpoint and export stay float32")
    p.add_argument("--amp-dtype", choices=["bfloat16", "float16"], default="bfloat16",
                   help="autocast dtype with --amp (float16 adds loss scaling; default: bfloat16)")


def cmd_train(args: argparse.Namespace) -> None:
    from models.dynamic_vit import ForwardSparsity
    from training.adaptive_prioritization import AdaptivePrioritization
    from training.backward_sparsity import BackwardSparsity
    from training.trainer import TrainOptions, train

    out = train(TrainOptions(
        data=args.data, out=args.out, backbone=args.backbone, backbone_weights=args.backbone_weights,
        pretrained=args.pretrained, backbone_kwargs=_key_values(args.backbone_arg), petl=args.petl,
        petl_options=_key_values(args.petl_arg),
        exits=args.exits, heads=args.heads, static=args.static, img_size=args.img_size, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
        prioritization=AdaptivePrioritization(gamma=args.loss_gamma, distill_weight=args.distill),
        forward_sparsity=ForwardSparsity(shallow=args.forward_sparsity),
        backward_sparsity=BackwardSparsity(rate=args.backward_sparsity),
        device=args.device, amp=args.amp, amp_dtype=args.amp_dtype,
    ))
    print(f"run written to {out}")


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="per-exit accuracy and accuracy/FLOPs on a split")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data", help="data set (default: the one trained on)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--baseline", action="append", default=[], type=Path, metavar="RUN_DIR",
                   help="another run (e.g. trained with --static) to plot as a point (repeatable)")


def cmd_eval(args: argparse.Namespace) -> None:
    from training.evaluate import REPORT_THRESHOLDS, evaluate_run

    r = evaluate_run(args.run_dir, args.data, args.split, args.baseline)
    print(f"{r['split']} split, {r['num_samples']} images")
    print("exit  after_block  cum_GFLOPs  accuracy")
    for k, (blk, g, a) in enumerate(zip(r["exits"], r["cumulative_gflops"], r["exit_accuracy"], strict=True)):
        print(f"{k:>4}  {blk:>11}  {g:>10.4f}  {a:>8.4f}")
    print("\nthreshold  accuracy  GFLOPs  FLOPs%  exit fractions")
    rows = {round(row["threshold"], 6): row for row in r["sweep"]}
    for t in REPORT_THRESHOLDS:
        row = rows[t]
        fr = " ".join(f"{f:.2f}" for f in row["exit_fractions"])
        print(f"{t:>9.2f}  {row['accuracy']:>8.4f}  {row['gflops']:>6.3f}  {100 * row['flops_fraction']:>5.1f}  {fr}")
    for name, row in r["modes"].items():
        print(f"mode {name:<8} threshold {row['threshold']:.4f}: accuracy {row['accuracy']:.4f}, "
              f"{100 * row['flops_fraction']:.1f}% of full FLOPs")
    for name, point in r["baselines"].items():
        print(f"baseline {name}: accuracy {point['accuracy']:.4f} at {point['gflops']:.4f} GFLOPs")
    print(f"\nwritten: {args.run_dir / ('eval_' + args.split + '.json')} and the plot eval_{args.split}.png")


def add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="calibrate a trained run again on its validation split")
    p.add_argument("run_dir", type=Path)


def cmd_calibrate(args: argparse.Namespace) -> None:
    from training.evaluate import recalibrate_run

    for name, mode in recalibrate_run(args.run_dir)["modes"].items():
        print(f"{name:<8} threshold {mode['threshold']:.4f}: val accuracy {mode['accuracy']:.4f}, "
              f"{100 * mode['flops_fraction']:.1f}% of full FLOPs")


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="per-stage ONNX segments + manifest into a model repository")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", required=True, type=Path, help="model repository root")
    p.add_argument("--name", default="model")
    p.add_argument("--version", default="1")


def cmd_export(args: argparse.Namespace) -> None:
    from training.export import export_run

    print(f"exported to {export_run(args.run_dir, args.out, args.name, args.version)}")


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model repository over HTTP (flags = DYNADAPTER_* settings)")
    try:
        from service.settings import add_settings_arguments
    except ImportError:  # a training-only install: the command is there, the flags need .[serve]
        return
    add_settings_arguments(p)


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        from service.main import serve
        from service.settings import settings_from_args
    except ImportError as err:
        raise RuntimeError(f"serving needs the serve extra (pip install 'dyn-adapter[serve]'): {err}") from err
    serve(settings_from_args(args))


def add_backbone(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backbone", help="builtin backbones")
    bsub = p.add_subparsers(dest="backbone_cmd", required=True)
    f = bsub.add_parser("fetch", help="obtain, convert and cache a builtin backbone")
    f.add_argument("name", help="e.g. dinov2-s14")
    f.add_argument("--cache-dir", type=Path)


def cmd_backbone(args: argparse.Namespace) -> None:
    from training.builtin_backbones import fetch_builtin_backbone

    print(fetch_builtin_backbone(args.name, args.cache_dir))


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the demo models")
    dsub = p.add_subparsers(dest="demo_cmd", required=True)
    b = dsub.add_parser("build", help="export the committed demo runs into a model repository (cached)")
    b.add_argument("--out", type=Path, default=Path("var/model_repo"))
    b.add_argument("--no-fixtures", action="store_true", help="leave the tiny test fixture model out")


def cmd_demo(args: argparse.Namespace) -> None:
    from training.demo import build_demo_repo

    print(f"demo model repository ready: {build_demo_repo(args.out, fixtures=not args.no_fixtures)}")


COMMANDS = {"train": (add_train, cmd_train), "eval": (add_eval, cmd_eval), "calibrate": (add_calibrate, cmd_calibrate),
            "export": (add_export, cmd_export),
            "serve": (add_serve, cmd_serve), "backbone": (add_backbone, cmd_backbone), "demo": (add_demo, cmd_demo),
            "bench": (add_bench, run_bench)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dynadapter", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # the ONNX exporter's passes log every rewrite at INFO
        for noisy in ("onnxscript", "onnx_ir"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        COMMANDS[args.command][1](args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        sys.exit(f"dynadapter {args.command}: error: {err}")


if __name__ == "__main__":
    main()
