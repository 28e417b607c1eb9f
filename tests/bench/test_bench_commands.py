"""`dynadapter bench`'s dispatch: `serve --photos` and `serve --precisions` run their own experiments, and the
results page lists every section's module once, in the page's order."""

from __future__ import annotations

import argparse
import importlib

import pytest

from dynadapter.bench.commands import PAGE_SECTIONS, SUBCOMMANDS, add_bench, experiment


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dynadapter")
    add_bench(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        (("serve",), "dynadapter.bench.serving.serve"),
        (("serve", "--photos"), "dynadapter.bench.serving.photos"),
        (("serve", "--precisions", "int8-openvino"), "dynadapter.bench.serving.precisions"),
        (("serve", "--photos", "--precisions", "int8-openvino"), "dynadapter.bench.serving.photos"),
        (("serve", "--no-photos"), "dynadapter.bench.serving.serve"),
        (("adapt",), "dynadapter.bench.serving.adapt"),
        (("data",), "dynadapter.bench.suite.data"),
    ],
)
def test_each_command_runs_its_own_experiment(argv: tuple[str, ...], module: str) -> None:
    assert experiment(parse(*argv)) == module


def test_every_section_of_results_json_has_one_owner() -> None:
    owners = [key for name in PAGE_SECTIONS for key in importlib.import_module(name).RESULT_KEYS]
    assert len(owners) == len(set(owners))
    assert {"serve", "serve_photos", "serve_precision", "adapt", "config", "rows", "target"} <= set(owners)
    # every subcommand's results are on the page (adapt's through its report module)
    assert {module.rsplit(".", 1)[1] for module in SUBCOMMANDS.values()} - {"adapt"} <= {
        name.rsplit(".", 1)[1] for name in PAGE_SECTIONS
    }
