"""``dynadapter bench``: benchmarks. They measure and report; they are not tests and assert nothing.

Each subcommand is a module with ``add_parser(subparsers)`` and ``run(args)``; adding one is one line
in ``SUBCOMMANDS``. ``bench serve --photos`` and ``--precisions`` run other experiments on the same
flags (``SERVE_EXPERIMENTS``), dispatched here so that no experiment imports another. The modules are
imported when the parser is built, so they keep heavy imports (torch, onnxruntime) inside ``run``:
``dynadapter`` must start in the serving image, which has no torch. Results pages are written through
``dynadapter.bench.lab.results.update_results``, which keeps the sections of the other experiments.

The benchmarks live in two wings over a shared harness: ``bench.lab`` (server processes, load, the
machine, the results page), ``bench.suite`` (the accuracy suite and its page) and ``bench.serving``
(the serving experiments); neither wing imports the other, and the lab imports neither.
"""

from __future__ import annotations

import argparse
import importlib

SUITE, SERVING = "dynadapter.bench.suite", "dynadapter.bench.serving"
#: subcommand -> module implementing it
SUBCOMMANDS = {
    "accuracy": f"{SUITE}.accuracy",
    "serve": f"{SERVING}.serve",
    "kernels": f"{SERVING}.kernels",
    "data": f"{SUITE}.data",
    "adapt": f"{SERVING}.adapt",
    "fewshot": f"{SUITE}.fewshot",
    "recipes": f"{SUITE}.recipes",
    "threads": f"{SERVING}.threads",
}
#: `bench serve` flag -> the experiment it runs instead of the plain one (the first flag given wins)
SERVE_EXPERIMENTS = {"photos": f"{SERVING}.photos", "precisions": f"{SERVING}.precisions"}
#: the modules that own sections of docs/results.json (``RESULT_KEYS``, ``render_markdown``), in the page's order
PAGE_SECTIONS = (
    f"{SUITE}.accuracy",
    f"{SERVING}.serve",
    f"{SERVING}.kernels",
    f"{SERVING}.photos",
    f"{SERVING}.precisions",
    f"{SUITE}.data",
    f"{SERVING}.adapt_report",
    f"{SUITE}.fewshot",
    f"{SUITE}.recipes",
    f"{SERVING}.threads",
)


def add_bench(subparsers: argparse._SubParsersAction) -> None:
    """``dynadapter bench`` and every subcommand's parser."""
    parser = subparsers.add_parser(
        "bench", help="benchmarks: accuracy and FLOPs on the downstream suite, serving, runtime adaptation, ..."
    )
    sub = parser.add_subparsers(dest="bench_command", required=True)
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)


def experiment(args: argparse.Namespace) -> str:
    """The module that runs the parsed ``dynadapter bench ...`` command."""
    if args.bench_command == "serve":
        chosen = [module for flag, module in SERVE_EXPERIMENTS.items() if getattr(args, flag, None)]
        return chosen[0] if chosen else SUBCOMMANDS["serve"]
    return SUBCOMMANDS[args.bench_command]


def run_bench(args: argparse.Namespace) -> None:
    """Run the experiment the parsed command names (``experiment``)."""
    importlib.import_module(experiment(args)).run(args)


COMMANDS = {"bench": (add_bench, run_bench)}
