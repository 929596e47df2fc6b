"""Command-line flags from config dataclasses: one ``--flag`` per field, its docstring as help.

A recipe starts from a preset (a named config) and lets flags override fields by name, so every
recipe has the same command-line shape and ``--help`` lists every field with its meaning.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from typing import Any, TypeVar

Config = TypeVar("Config")


def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstrings written under each field of a dataclass (read from its source)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body
        for node, following in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _parser_for(annotation: Any) -> tuple[Any, str | None]:
    """(value parser, metavar) for a field's type; tuples of ints are written ``512,256``."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else str
        origin = typing.get_origin(annotation)
    if origin is tuple:
        item = typing.get_args(annotation)[0]

        def parse_tuple(text: str) -> tuple:
            return tuple(item(part) for part in text.split(",") if part.strip())

        return parse_tuple, "A,B,..."
    base = annotation if annotation in (int, float, str, bool) else str
    if optional and base is not str:

        def parse_optional(text: str) -> Any:
            return None if text.lower() in ("none", "") else base(text)

        return parse_optional, base.__name__.upper()
    return base, None


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, title: str | None = None,
                         exclude: tuple[str, ...] = ()) -> None:
    """Add one ``--field-name`` flag per field of dataclass ``cls``; unset flags stay out of the namespace."""
    group = parser.add_argument_group(title or cls.__name__)
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in exclude or not field.init:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = f"{docs.get(field.name, '')} (default: {default})".strip()
        help_text = help_text.replace("%", "%%")
        annotation = hints[field.name]
        if annotation is bool:
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS,
                               help=help_text)
            continue
        value_parser, metavar = _parser_for(annotation)
        group.add_argument(flag, dest=field.name, type=value_parser, default=argparse.SUPPRESS, metavar=metavar,
                           help=help_text)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-able dict (tuples become lists)."""
    return {f.name: (list(v) if isinstance(v := getattr(config, f.name), tuple) else v)
            for f in dataclasses.fields(config)}


def config_from_dict(cls: type[Config], values: dict[str, Any]) -> Config:
    """Build config dataclass ``cls`` from a dict; an unknown key is an error that names it and lists the fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; fields are: {', '.join(sorted(names))}")
    return cls(**values)


def overrides_from_args(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line, by name."""
    names = {field.name for field in dataclasses.fields(cls)}
    return {name: value for name, value in vars(args).items() if name in names}


def apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    """A copy of dataclass ``config`` with the fields given on the command line replaced."""
    overrides = overrides_from_args(type(config), args)
    return dataclasses.replace(config, **overrides) if overrides else config
