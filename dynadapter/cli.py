"""``dynadapter``: the front door. It composes the subcommands each room owns (training, export,
service, bench) and turns a user's error into one line; nothing imports this module.

Heavy imports (torch, timm, onnxruntime) happen inside each command, so ``dynadapter serve`` runs
in the serving image, which has neither torch nor timm.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from dynadapter.errors import DynAdapterError

#: The rooms whose ``commands`` module contributes subcommands, in the order ``--help`` lists them.
ROOMS = (
    "dynadapter.training.commands",
    "dynadapter.export.commands",
    "dynadapter.service.commands",
    "dynadapter.bench.commands",
)

Run = Callable[[argparse.Namespace], None]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Run]]:
    parser = argparse.ArgumentParser(prog="dynadapter", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True)
    runs: dict[str, Run] = {}
    for room in ROOMS:
        for name, (add, run) in importlib.import_module(room).COMMANDS.items():
            add(sub)
            runs[name] = run
    return parser, runs


def main(argv: Sequence[str] | None = None) -> None:
    parser, runs = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # the ONNX exporter's passes log every rewrite at INFO
        for noisy in ("onnxscript", "onnx_ir"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        runs[args.command](args)
    except DynAdapterError as err:
        if args.verbose:
            raise
        sys.exit(f"dynadapter {args.command}: error: {err}")


if __name__ == "__main__":
    main()
