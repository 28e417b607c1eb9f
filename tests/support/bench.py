"""``dynadapter bench ...`` as the bench tests call it (`bench`), with the tiny suite's flags (`TINY`) and
`bench serve`'s on a tiny run (`serve_args`)."""

import argparse
from pathlib import Path

from dynadapter.bench.commands import add_bench, run_bench
from tests.support.tiny import TINY_BACKBONE

#: The accuracy suite's flags for a tiny random ViT: digits, the adapter, one seed, 2 epochs at 16 px.
TINY = [
    "--backbone",
    "vit_tiny_patch16_224",
    *[f"--backbone-arg={k}={v}" for k, v in TINY_BACKBONE.items()],
    "--img-size",
    "16",
    "--epochs",
    "2",
    "--tasks",
    "digits",
    "--methods",
    "adapter",
    "--seeds",
    "0",
]


def bench(*argv: str) -> None:
    """What ``dynadapter bench ...`` runs (bench/commands.py registers add_bench / run_bench)."""
    parser = argparse.ArgumentParser(prog="dynadapter")
    add_bench(parser.add_subparsers(dest="command", required=True))
    run_bench(parser.parse_args(["bench", *argv]))


def serve_args(run: Path, docs: Path, concurrency: tuple[int, ...], requests: int, images: int) -> list[str]:
    """`bench serve` on a tiny run, one round, `requests` per measurement (the duration is generous so
    that the request count bounds each one)."""
    return [
        "serve",
        "--run-dir",
        str(run),
        "--concurrency",
        ",".join(map(str, concurrency)),
        "--requests",
        str(requests),
        "--duration",
        "60",
        "--rounds",
        "1",
        "--images",
        str(images),
        "--docs",
        str(docs),
        "--tuned-threads",
        "0",
    ]
