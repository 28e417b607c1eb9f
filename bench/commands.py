"""``dynadapter bench``: benchmarks. They measure and report; they are not tests and assert nothing.

Each subcommand is a module of this package with ``add_parser(subparsers)`` and ``run(args)``;
adding one (e.g. ``serve``) is one line in ``SUBCOMMANDS``. The modules are imported when the
parser is built, so they keep heavy imports (torch, onnxruntime) inside ``run``: ``dynadapter``
must start in the serving image, which has no torch. Results pages are written through
``dynadapter.bench.results.update_results``, which keeps the sections of the other subcommands.
"""

from __future__ import annotations

import argparse
import importlib

#: subcommand -> module implementing it
SUBCOMMANDS = {
    "accuracy": "dynadapter.bench.accuracy",
    "serve": "dynadapter.bench.serve",
    "data": "dynadapter.bench.data",
    "adapt": "dynadapter.bench.adapt",
    "fewshot": "dynadapter.bench.fewshot",
    "recipes": "dynadapter.bench.recipes",
}


def add_bench(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmarks: accuracy and FLOPs on the downstream suite, serving, runtime adaptation, ..."
    )
    sub = parser.add_subparsers(dest="bench_command", required=True)
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)


def run_bench(args: argparse.Namespace) -> None:
    importlib.import_module(SUBCOMMANDS[args.bench_command]).run(args)


COMMANDS = {"bench": (add_bench, run_bench)}
