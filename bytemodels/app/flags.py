"""Command-line flags from config dataclasses: one ``--flag`` per field, its docstring as help; flag types with
bounds; one-line flag errors.

A recipe starts from a preset (a named config) and lets flags override fields by name, so every
recipe has the same command-line shape and ``--help`` lists every field with its meaning.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import operator
import textwrap
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from bytemodels.fields import Config, seed

__all__ = ["COUNT", "FRACTION", "NON_NEGATIVE", "POSITIVE", "add_config_arguments", "apply_overrides",
           "field_docs", "number", "one_line_errors", "overrides_from_args", "seed"]


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
                         exclude: tuple[str, ...] = (), defaults: Mapping[str, Any] | None = None) -> None:
    """Add one ``--field-name`` flag per field of dataclass ``cls``; unset flags stay out of the namespace.

    ``defaults`` are the values a recipe actually uses when a flag is not given (its preset and device defaults):
    the help shows them instead of the dataclass's own."""
    group = parser.add_argument_group(title or cls.__name__)
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in exclude or not field.init:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else None
        if defaults is not None and field.name in defaults:
            default = defaults[field.name]
        if isinstance(default, (tuple, list)):
            default = ",".join(str(item) for item in default)  # as the flag is written
        help_text = f"{docs.get(field.name, '')} (default: {default})".strip()
        help_text = help_text.replace("%", "%%")
        annotation = hints[field.name]
        if annotation is bool:
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS,
                               help=help_text)
            continue
        value_parser, metavar = _parser_for(annotation)
        value_parser = field.metadata.get("flag_type", value_parser)  # a field may bound its flag (seed)
        group.add_argument(flag, dest=field.name, type=value_parser, default=argparse.SUPPRESS, metavar=metavar,
                           help=help_text)


def overrides_from_args(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line, by name."""
    names = {field.name for field in dataclasses.fields(cls)}
    return {name: value for name, value in vars(args).items() if name in names}


def apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    """A copy of dataclass ``config`` with the fields given on the command line replaced."""
    overrides = overrides_from_args(type(config), args)
    return dataclasses.replace(config, **overrides) if overrides else config


# -- flag types with bounds -----------------------------------------------------------------------------
def number(kind: type = int, *, at_least: float | None = None, above: float | None = None,
           at_most: float | None = None, below: float | None = None) -> Callable[[str], Any]:
    """An argparse ``type`` for a numeric flag that must keep within bounds, e.g. ``number(int, at_least=1)``
    or ``number(float, at_least=0, below=1)``: a value outside them (or not finite) is refused as the flag is
    parsed, with an error naming the flag and the bound (``argument --limit: must be at least 1, not -5``)."""
    bounds = [(words, test, limit) for words, test, limit in (
        ("at least", operator.ge, at_least), ("above", operator.gt, above),
        ("at most", operator.le, at_most), ("below", operator.lt, below)) if limit is not None]
    wanted = " and ".join(f"{words} {limit:g}" for words, _, limit in bounds)

    def parse(text: str) -> Any:
        value = kind(text)  # not a number: argparse's own "invalid int value: 'x'"
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
        if not all(test(value, limit) for _, test, limit in bounds):
            raise argparse.ArgumentTypeError(f"must be {wanted}, not {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


COUNT = number(int, at_least=1)
"""``type`` of a flag that counts things (documents to read, samples to write, bytes to generate): 1 or more."""
NON_NEGATIVE = number(float, at_least=0)
"""``type`` of a flag such as ``--temperature`` (0 is greedy) or a prompt length in seconds: 0 or more."""
POSITIVE = number(float, above=0)
"""``type`` of a length in seconds that must hold something: more than 0."""
FRACTION = number(float, at_least=0, below=1)
"""``type`` of ``--val-fraction``: a share of the documents in [0, 1), as the data layer's split takes it."""


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` and its subcommands' parsers report a bad flag in one line (``prog: error: ...``, exit
    status 2) instead of argparse's usage block first (dozens of lines for a recipe; ``--help`` shows it)."""
    def error(message: str, parser: argparse.ArgumentParser = parser) -> None:
        parser.exit(2, f"{parser.prog}: error: {message}\n")

    parser.error = error  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                one_line_errors(sub)
    return parser
