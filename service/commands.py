"""The service's subcommand: `serve`, its flags generated from `Settings`."""

from __future__ import annotations

import argparse

from dynadapter.errors import ConfigError


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model repository over HTTP (flags = DYNADAPTER_* settings)")
    try:
        from dynadapter.service.settings import add_settings_arguments
    except ImportError:  # a training-only install: the command is there, the flags need .[serve]
        return
    add_settings_arguments(p)


def run_serve(args: argparse.Namespace) -> None:
    try:
        from pydantic import ValidationError

        from dynadapter.service.main import serve
        from dynadapter.service.settings import env_name, flag_name, settings_from_args
    except ImportError as err:
        raise ImportError(f"serving needs the serve extra (pip install 'dyn-adapter[serve]'): {err}") from err
    try:
        settings = settings_from_args(args)
    except ValidationError as err:  # a bad DYNADAPTER_* variable (a bad flag is argparse's error already)
        first = err.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        where = f"{env_name(name)} / {flag_name(name)}: " if name else ""
        raise ConfigError(f"{where}{first['msg']} (got {first.get('input')!r})") from None
    serve(settings)


COMMANDS = {"serve": (add_serve, run_serve)}
