"""Config dataclasses as plain values: to and from JSON-able dicts, and the range of a seed field.

The core's configs (``MegabyteConfig``, ``TrainConfig``) are saved in checkpoints as JSON and read back here;
the command-line flags built from the same fields live above the core, in ``bytemodels.app.flags``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

Config = TypeVar("Config")


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


def seed(text: str) -> int:
    """A seed written as text: a whole number in 0 .. 2**64 - 1, what torch's and numpy's seeding take.

    A config field names it as its flag type (``metadata={"flag_type": seed}``), so a larger one is refused as
    the flag is parsed (``argument --seed: must be in 0 .. 2**64 - 1, not ...``)."""
    value = int(text)  # not a number: argparse's own "invalid int value: 'x'"
    if not 0 <= value < 2**64:
        # argparse shows this error's own message (a ValueError would become "invalid int value").
        raise argparse.ArgumentTypeError(f"must be in 0 .. 2**64 - 1, not {text}")
    return value


seed.__name__ = "int"
