"""The exporter's subcommands: `export` and `demo build` (torch is imported when they run)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dynadapter.export.int8_gate import INT8_MAX_ACCURACY_DROP

#: torch logs this when it imports its C++-extension helpers (NNCF does, for int8) on a machine with a CUDA
#: toolkit folder but no CUDA runtime: harmless on a CPU-only machine, where it reads like a failure.
NO_CUDA_RUNTIME = "No CUDA runtime is found"


def _not_the_cuda_probe(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(NO_CUDA_RUNTIME)


def quiet_cuda_probe() -> None:
    """Drop torch's "No CUDA runtime is found" warning, and only it (a filter on the one logger that
    writes it, `torch.utils.cpp_extension`); call before torch is imported. Idempotent."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    if _not_the_cuda_probe not in logger.filters:
        logger.addFilter(_not_the_cuda_probe)


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="per-stage ONNX segments + manifest into a model repository")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", required=True, type=Path, help="model repository root")
    p.add_argument("--name", default="model", help="the model's name in the repository and the API (default: model)")
    p.add_argument(
        "--version",
        help="a positive integer (default: one above the highest version of NAME in the repository, 1 in a new one)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --version (a server that holds it keeps the old one until it reloads)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        help="comma-separated precisions: fp32 (ONNX segments, always written), int8 (NNCF-quantized "
        "OpenVINO IR, with fp32 IR beside it; an error where it fails the accuracy gate); each is calibrated "
        "on its own. auto (default): fp32, and int8 where openvino and nncf are installed and it passes the "
        "gate (a line says when it does not); --precision fp32 leaves int8 out",
    )
    p.add_argument(
        "--int8-max-accuracy-drop",
        type=float,
        default=INT8_MAX_ACCURACY_DROP,
        help="the int8 gate: int8's validation accuracy may be at most this fraction below fp32's, at every "
        f"exit and in every mode at its own thresholds (default: {INT8_MAX_ACCURACY_DROP}, "
        f"{100 * INT8_MAX_ACCURACY_DROP:g} point)",
    )
    p.add_argument(
        "--int8-method",
        choices=("auto", "ptq", "accuracy-control"),
        default="auto",
        help="ptq: NNCF post-training quantization; accuracy-control: NNCF's quantize_with_accuracy_control "
        "(the layers that cost accuracy stay fp32); auto (default): ptq, then accuracy-control where ptq "
        "fails the gate",
    )


def run_export(args: argparse.Namespace) -> None:
    quiet_cuda_probe()
    from dynadapter.contract import read_manifest
    from dynadapter.export.exporter import export_run
    from dynadapter.export.precisions import cpu_runtime_precisions, gate_lines, parse_precisions

    auto = args.precision == "auto"
    precisions = cpu_runtime_precisions() if auto else parse_precisions(args.precision)
    check_export_name(args.name)
    version = export_version(args.out / args.name, args.version, args.overwrite)
    folder = export_run(
        args.run_dir, args.out, args.name, version, precisions, args.int8_max_accuracy_drop, args.int8_method, not auto
    )
    print(f"exported to {folder}")
    if (folder / "manifest.json").is_file():  # which gate each precision passed
        for line in gate_lines(read_manifest(folder / "manifest.json")):
            print(f"  {line}")


def check_export_name(name: str) -> None:
    """``ExportError`` for a --name the service would refuse (the repository's one rule for model names)."""
    from dynadapter.contract.model_repository import InvalidModelName, check_model_name
    from dynadapter.errors import ExportError

    try:
        check_model_name(name)
    except InvalidModelName as err:
        raise ExportError(f"--name: {err}") from None


def export_version(model_dir: Path, version: str | None, overwrite: bool) -> str:
    """The version folder to write under ``model_dir``: ``version``, or the next free one.

    Raises ``ExportError`` for a version that is no positive integer (the repository's folders are
    numbered), or one that exists without ``overwrite``: replacing it silently would leave a server
    that holds it answering with the old model while its files say otherwise.
    """
    from dynadapter.contract.model_repository import is_version
    from dynadapter.errors import ExportError

    existing = sorted(int(p.name) for p in model_dir.glob("*") if p.is_dir() and is_version(p.name))
    if version is None:
        return str(existing[-1] + 1 if existing else 1)
    if not is_version(version) or int(version) < 1:
        raise ExportError(f"--version {version!r}: versions are positive integers (folders 1, 2, ...)")
    if int(version) in existing and not overwrite:
        raise ExportError(
            f"{model_dir / version} exists: pass --overwrite to replace it, or leave --version out for the "
            f"next one ({existing[-1] + 1})"
        )
    return str(int(version))


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the demo models")
    dsub = p.add_subparsers(dest="demo_cmd", required=True)
    b = dsub.add_parser("build", help="export the committed demo runs into a model repository (cached)")
    b.add_argument("--out", type=Path, default=Path("var/model_repo"))
    b.add_argument("--no-fixtures", action="store_true", help="leave the tiny test fixture model out")
    b.add_argument("--demo-dir", type=Path, help="the committed runs (default: the checkout's demo/)")


def run_demo(args: argparse.Namespace) -> None:
    quiet_cuda_probe()
    from dynadapter.export.demo import build_demo_repo

    repo = build_demo_repo(args.out, fixtures=not args.no_fixtures, demo_dir=args.demo_dir)
    print(f"demo model repository ready: {repo}")


COMMANDS = {"export": (add_export, run_export), "demo": (add_demo, run_demo)}
