"""Command-line flags generated from a pydantic model's fields, so that options are defined once.

Each field `x` becomes `--x` in kebab case (or the field's `flag` extra), with the field's
description as help, and is parsed and validated as the field would be, so that argparse names the
flag in its error. A flag left out is absent from the namespace: the model's default (or, for
settings, the environment) stays in force. Used by `dynadapter serve` (`Settings`) and
`dynadapter train` (`TrainOptions`).

Field extras understood (`Field(json_schema_extra={...})`):
    flag: the flag's name, where it differs from the field's (`--backbone-arg` for `backbone_kwargs`).
    cli: False keeps a field off the command line.
    key_values: True makes a repeatable `KEY=VALUE` flag that fills a dict (VALUE parsed as JSON
        when it parses, else a string).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal, TypeVar, cast, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

M = TypeVar("M", bound=BaseModel)


def comma_separated(value: object) -> object:
    """`a,b,c` -> ['a', 'b', 'c'] (a BeforeValidator for list fields given as one flag or env var)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def flag_name(name: str, field: FieldInfo | None = None) -> str:
    return str(_extra(field, "flag") or "--" + name.replace("_", "-"))


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    if default in (None, [], {}):
        return "unset"
    if isinstance(default, list | tuple):  # as the flag takes it: comma-separated
        return ",".join(str(item) for item in default)
    return str(default)


def _default_note(field: FieldInfo) -> str:
    """`(required)`, `(default: X)`, or nothing where the description says its default in words already
    or there is none to say."""
    text = default_text(field)
    if text == "required":
        return "(required)"
    if "(default" in (field.description or "") or text == "unset":
        return ""
    return f"(default: {text})"


def cli_fields(model: type[BaseModel]) -> Iterable[tuple[str, FieldInfo]]:
    return ((name, field) for name, field in model.model_fields.items() if _extra(field, "cli") is not False)


def add_arguments(
    parser: argparse.ArgumentParser, model: type[BaseModel], help_suffix: Callable[[str, FieldInfo], str] | None = None
) -> None:
    """One flag per field of `model`; `help_suffix(name, field)` replaces the default note (`_default_note`)."""
    for name, field in cli_fields(model):
        note = help_suffix(name, field) if help_suffix else _default_note(field)
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": f"{field.description or ''} {note}".strip().replace("%", "%%"),
        }
        if field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif _extra(field, "key_values"):
            kwargs |= {"action": "append", "type": key_value, "metavar": "KEY=VALUE"}
        else:
            kwargs |= {"type": _flag_parser(field), "metavar": _metavar(name, field)}
        parser.add_argument(flag_name(name, field), **kwargs)


def from_args(model: type[M], namespace: argparse.Namespace, **overrides: Any) -> M:
    """The model from the flags given (then the environment, for settings, then the defaults)."""
    given = {name: getattr(namespace, name) for name, _ in cli_fields(model) if hasattr(namespace, name)}
    for name, field in cli_fields(model):
        if _extra(field, "key_values") and name in given:
            given[name] = {key: value for key, value in given[name]}
    return model(**given, **overrides)


def _extra(field: FieldInfo | None, key: str) -> object:
    extra = field.json_schema_extra if field is not None else None
    return extra.get(key) if isinstance(extra, dict) else None


def key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _flag_parser(field: FieldInfo) -> Callable[[str], Any]:
    """Validate a flag's text as the field would, so that argparse names the flag in its error."""
    # A type built at run time: mypy cannot check it, pydantic validates it.
    adapter: TypeAdapter[Any] = TypeAdapter(cast(Any, Annotated[field.annotation, field]))

    def parse(text: str) -> Any:
        try:
            return adapter.validate_python(text)
        except ValidationError as err:
            raise argparse.ArgumentTypeError(err.errors()[0]["msg"]) from None

    return parse


def _metavar(name: str, field: FieldInfo) -> str:
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        return "{" + ",".join(str(arg) for arg in get_args(annotation)) + "}"
    return name.upper()
