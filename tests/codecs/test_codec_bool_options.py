"""Boolean options are real bools: a string such as "False" is refused, never taken as true."""

from __future__ import annotations

import json
import re

import pytest

import bytecodecs
from bytecodecs import CodecError, iter_folder, list_files

#: Every boolean option of every built-in codec.
BOOL_OPTIONS = [("text", "strict"), ("image", "header")]
NOT_BOOLS = ["False", "True", "false", "no", "maybe", "", 0, 1, None, 1.0]


def test_every_bool_option_of_the_builtins_is_listed():
    import dataclasses

    found = {(name, field.name) for name in ("text", "wav", "image")
             for field in dataclasses.fields(bytecodecs.codec_class(name)) if field.type in (bool, "bool")}
    assert found == set(BOOL_OPTIONS)


@pytest.mark.parametrize("codec, option", BOOL_OPTIONS)
@pytest.mark.parametrize("value", NOT_BOOLS)
def test_a_bool_option_refuses_anything_but_a_bool(codec, option, value):
    message = f"{codec} codec: {option} must be true or false, got {value!r}"
    with pytest.raises(CodecError, match=re.escape(message)):
        bytecodecs.get_codec(codec, **{option: value})


def test_the_message_for_a_string_says_how_to_write_a_bool_on_the_command_line():
    with pytest.raises(CodecError) as raised:
        bytecodecs.get_codec("text", strict="maybe")
    assert str(raised.value) == ("text codec: strict must be true or false, got 'maybe' "
                                 "(on the command line write -O strict=true or -O strict=false)")
    with pytest.raises(CodecError, match=re.escape("-O header=true or -O header=false")):
        bytecodecs.get_codec("image", header="False")


def test_a_bad_bool_in_a_config_is_refused():
    with pytest.raises(CodecError, match="strict must be true or false, got 'no'"):
        bytecodecs.codec_from_config({"name": "text", "strict": "no"})
    with pytest.raises(CodecError, match="header must be true or false, got 'False'"):
        bytecodecs.codec_from_config({"name": "image", "header": "False"})


def test_real_bools_work():
    assert bytecodecs.get_codec("text", strict=False).decode(b"caf\xe9") == "caf\ufffd"
    with pytest.raises(CodecError, match="not valid UTF-8"):
        bytecodecs.get_codec("text", strict=True).decode(b"caf\xe9")
    plain = bytecodecs.get_codec("image", width=2, height=2, mode="L", header=False)
    headed = bytecodecs.get_codec("image", width=2, height=2, mode="L", header=True)
    assert plain.framing.record_size == 4
    assert headed.framing.record_size == 5 + 4


@pytest.mark.parametrize("codec, option", BOOL_OPTIONS)
@pytest.mark.parametrize("value", [True, False])
def test_the_config_round_trip_keeps_real_bools(codec, option, value):
    options = {option: value}
    if codec == "image" and value:
        options["fit"] = "keep"
    original = bytecodecs.get_codec(codec, **options)
    recorded = json.loads(json.dumps(original.config()))   # as a checkpoint stores it
    assert recorded[option] is value
    rebuilt = bytecodecs.codec_from_config(recorded)
    assert getattr(rebuilt, option) is value
    assert rebuilt == original


def test_normalize_none_message_says_how_to_write_none_on_the_command_line():
    with pytest.raises(CodecError) as raised:
        bytecodecs.get_codec("text", normalize="None")
    assert "normalize='None' must be one of" in str(raised.value)
    assert "-O normalize=null" in str(raised.value)
    assert bytecodecs.get_codec("text", normalize=None).normalize is None


def test_folder_loader_bool_options_are_real_bools(tmp_path):
    (tmp_path / "a.txt").write_text("a", encoding="utf-8")
    codec = bytecodecs.get_codec("text")
    with pytest.raises(CodecError, match="folder loader: strict must be true or false, got 'no'"):
        iter_folder(tmp_path, codec, strict="no")
    with pytest.raises(CodecError, match="list_files: recursive must be true or false, got 'False'"):
        list_files(tmp_path, recursive="False")
    assert [path.name for path, _ in iter_folder(tmp_path, codec, recursive=False, strict=True)] == ["a.txt"]


@pytest.mark.parametrize("name, options", [
    ("image", {"width": True}), ("image", {"fill": True}), ("wav", {"channels": True}), ("wav", {"channels": 1.0}),
    ("wav", {"sample_rate": True}),
])
def test_integer_options_refuse_bools_and_floats(name, options):
    with pytest.raises(CodecError, match=next(iter(options))):
        bytecodecs.get_codec(name, **options)
