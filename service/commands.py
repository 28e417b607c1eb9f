"""The service's subcommand: `serve`, its flags generated from `Settings`."""

from __future__ import annotations

import argparse


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model repository over HTTP (flags = DYNADAPTER_* settings)")
    try:
        from dynadapter.service.settings import add_settings_arguments
    except ImportError:  # a training-only install: the command is there, the flags need .[serve]
        return
    add_settings_arguments(p)


def run_serve(args: argparse.Namespace) -> None:
    try:
        from dynadapter.service.main import serve
        from dynadapter.service.settings import settings_from_args
    except ImportError as err:
        raise ImportError(f"serving needs the serve extra (pip install 'dyn-adapter[serve]'): {err}") from err
    serve(settings_from_args(args))


COMMANDS = {"serve": (add_serve, run_serve)}
