import argparse
from dataclasses import dataclass

import pytest

from bytemodels import MegabyteConfig
from bytemodels.app.flags import add_config_arguments, apply_overrides, field_docs


@dataclass
class Example:
    steps: int = 10
    """How many steps to run."""
    rate: float | None = None
    """Learning rate, or none for the default."""
    compile: bool = False
    """Compile the model."""
    sizes: tuple[int, ...] = (1, 2)
    """Sizes, comma separated."""


def parse(cls, argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls)
    return parser, parser.parse_args(argv)


def test_every_field_becomes_a_flag_with_its_docstring_as_help():
    parser, _ = parse(Example, [])
    text = parser.format_help()
    for flag, doc in [("--steps", "How many steps"), ("--rate", "Learning rate"), ("--compile", "Compile"),
                      ("--sizes", "comma separated")]:
        assert flag in text and doc in text


def test_flags_override_only_what_was_given():
    _, args = parse(Example, ["--steps", "5", "--sizes", "3,4,5", "--compile"])
    config = apply_overrides(Example(rate=0.1), args)
    assert config == Example(steps=5, rate=0.1, compile=True, sizes=(3, 4, 5))
    _, args = parse(Example, ["--rate", "none"])
    assert apply_overrides(Example(rate=0.1), args).rate is None


def test_model_config_fields_all_have_help():
    docs = field_docs(MegabyteConfig)
    assert set(docs) == {f for f in MegabyteConfig.__dataclass_fields__}
    _, args = parse(MegabyteConfig, ["--dims", "64,32", "--heads", "2,2"])
    config = apply_overrides(MegabyteConfig.preset("tiny"), args)
    assert config.dims == (64, 32) and config.heads == (2, 2)


def test_bad_value_is_an_argparse_error():
    with pytest.raises(SystemExit):
        parse(Example, ["--steps", "many"])
