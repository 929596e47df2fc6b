"""Reading the JSON files of model and checkpoint folders: one helper, one-line errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400: Python's parser would give inf
        raise ValueError(f"{text} is too large for a float")
    return value


def read_json(path: str | Path, error: type[Exception] = ValueError) -> Any:
    """The value of the JSON file ``path``; anything wrong with the file (unreadable, not UTF-8, not JSON,
    ``NaN`` or ``Infinity``, nested too deeply) raises ``error`` with one line naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file is missing") from None
    except OSError as cause:
        raise error(f"{path}: cannot read ({cause.strerror or cause})") from None
    except UnicodeDecodeError as cause:
        raise error(f"{path}: not UTF-8 text ({cause.reason} at byte {cause.start})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ValueError as cause:  # JSONDecodeError, or a number refused above
        raise error(f"{path}: not valid JSON ({cause})") from None
    except RecursionError:
        raise error(f"{path}: not valid JSON (nested too deeply)") from None


def read_json_object(path: str | Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    """``read_json`` of a file that must hold a JSON object."""
    value = read_json(path, error)
    if not isinstance(value, dict):
        raise error(f"{path}: not a JSON object (found a {type(value).__name__})")
    return value
