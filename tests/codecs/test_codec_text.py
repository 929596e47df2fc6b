"""Text codec: exact UTF-8 round trips, decoding that never raises, strict mode, normalization."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import bytecodecs
from bytecodecs import CodecError, TextCodec


@given(st.text())
def test_any_string_round_trips_exactly(text: str) -> None:
    codec = TextCodec()
    data = codec.encode(text)
    assert data == text.encode("utf-8")
    assert codec.decode(data) == text


@given(st.binary(max_size=64))
def test_decoding_any_bytes_never_raises(data: bytes) -> None:
    decoded = TextCodec().decode(data)
    assert decoded == data.decode("utf-8", errors="replace")


@given(st.text(min_size=1), st.data())
def test_truncated_utf8_becomes_replacement_character(text: str, draw) -> None:
    data = TextCodec().encode(text)
    cut = draw.draw(st.integers(0, len(data)))
    decoded = TextCodec().decode(data[:cut])
    assert text.startswith(decoded.rstrip("\ufffd"))  # the complete characters, then U+FFFD for a cut one


def test_cut_inside_a_character_gives_u_fffd() -> None:
    data = TextCodec().encode("café")
    assert TextCodec().decode(data[:-1]) == "caf\ufffd"


def test_strict_raises_codec_error_on_invalid_utf8() -> None:
    with pytest.raises(CodecError, match="not valid UTF-8 at byte 3"):
        TextCodec(strict=True).decode(b"caf\xe9")
    assert TextCodec(strict=True).decode("café".encode()) == "café"


def test_normalization_is_applied_before_encoding() -> None:
    decomposed = "e\u0301"
    assert TextCodec().encode(decomposed) == b"e\xcc\x81"
    assert TextCodec(normalize="NFC").encode(decomposed) == "\u00e9".encode()
    assert TextCodec(normalize="NFKC").encode("ﬁ") == b"fi"
    with pytest.raises(CodecError, match="normalize"):
        TextCodec(normalize="NFX")


def test_encode_rejects_non_strings_and_lone_surrogates() -> None:
    with pytest.raises(CodecError, match="not bytes"):
        TextCodec().encode(b"abc")
    with pytest.raises(CodecError, match="no UTF-8 form at character 1"):
        TextCodec().encode("a\ud800b")


def test_file_round_trip_keeps_every_byte(tmp_path) -> None:
    codec = TextCodec()
    text = "\ufeffline one\r\nline two\n\x00end"
    path = codec.save(text, tmp_path / "deep" / "sample.txt")
    assert path.read_bytes() == text.encode("utf-8")
    assert codec.load(path) == text
    assert codec.encode_file(path) == text.encode("utf-8")
    assert [p.name for p in tmp_path.joinpath("deep").iterdir()] == ["sample.txt"]  # no temp file left


def test_write_bytes_adds_extension_and_survives_garbage(tmp_path) -> None:
    path = TextCodec().write_bytes(b"ok \xff\xfe \xe2\x82", tmp_path / "sample")
    assert path.name == "sample.txt"
    assert path.read_text(encoding="utf-8") == "ok \ufffd\ufffd \ufffd"


def test_framing_tag_and_config() -> None:
    codec = bytecodecs.get_codec("text", normalize="NFC")
    assert codec.framing == bytecodecs.Framing(record_size=None, align=1)
    assert (codec.name, codec.modality, codec.tag, codec.extension) == ("text", "text", 0, ".txt")
    assert codec.config() == {"name": "text", "strict": False, "normalize": "NFC"}
    assert bytecodecs.codec_from_config(codec.config()) == codec
