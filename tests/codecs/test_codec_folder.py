"""Folder loader: good files encoded in order, bad ones skipped, counted and reported at the end."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile

import bytecodecs
from bytecodecs import CodecError, TextCodec, WavCodec, iter_folder, list_files


@pytest.fixture
def mixed_folder(tmp_path):
    """Three good WAVs (one nested), three bad ones, a hidden file and a file of another type."""
    for index, name in enumerate(["a.wav", "sub/b.WAV", "c.flac"]):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        soundfile.write(path, np.full(100 + index, 0.25, dtype=np.float32), 8000, subtype="PCM_16")
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_bytes(b"not audio at all, just text")
    good = (tmp_path / "a.wav").read_bytes()
    (tmp_path / "sub" / "cut.wav").write_bytes(good[:100])
    (tmp_path / ".hidden.wav").write_bytes(b"")
    (tmp_path / "readme.txt").write_text("ignored", encoding="utf-8")
    return tmp_path


def test_good_files_in_order_bad_ones_counted(mixed_folder, caplog) -> None:
    files = iter_folder(mixed_folder, WavCodec(sample_format="pcm16"))
    with caplog.at_level(logging.WARNING, logger="bytecodecs.folder"):
        loaded = list(files)
    assert [path.relative_to(mixed_folder).as_posix() for path, _ in loaded] == ["a.wav", "c.flac", "sub/b.WAV"]
    assert [len(data) for _, data in loaded] == [200, 204, 202]
    assert files.loaded == 3 and files.skipped_count == 3
    assert sorted(error.path.name for error in files.skipped) == ["cut.wav", "empty.wav", "notes.wav"]
    assert all(isinstance(error, CodecError) for error in files.skipped)
    report = files.report()
    assert report.startswith(f"read 3 files from {mixed_folder}; skipped 3 unusable files (first: ")
    assert caplog.records and caplog.records[-1].getMessage() == report  # reported once, at the end


def test_no_warning_when_nothing_was_skipped(tmp_path, caplog) -> None:
    (tmp_path / "one.txt").write_text("hello", encoding="utf-8")
    files = iter_folder(tmp_path, TextCodec())
    with caplog.at_level(logging.WARNING, logger="bytecodecs.folder"):
        assert [data for _, data in files] == [b"hello"]
    assert files.skipped_count == 0 and not caplog.records


def test_options_recursive_extensions_strict(mixed_folder) -> None:
    codec = WavCodec()
    top = [path.name for path, _ in iter_folder(mixed_folder, codec, recursive=False)]
    assert top == ["a.wav", "c.flac"]
    only_flac = [path.name for path, _ in iter_folder(mixed_folder, codec, extensions=["flac"])]
    assert only_flac == ["c.flac"]
    with pytest.raises(CodecError, match="empty.wav: is empty"):
        list(iter_folder(mixed_folder, codec, strict=True))
    everything = list_files(mixed_folder)
    assert len(everything) == 7 and not any(path.name.startswith(".") for path in everything)


def test_missing_folder_is_a_codec_error(tmp_path) -> None:
    with pytest.raises(CodecError, match="no such folder"):
        iter_folder(tmp_path / "nowhere", bytecodecs.get_codec("text"))
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    with pytest.raises(CodecError, match="is not a folder"):
        iter_folder(tmp_path / "file.txt", bytecodecs.get_codec("text"))


def test_limit_keeps_the_first_files(mixed_folder) -> None:
    files = iter_folder(mixed_folder, WavCodec(sample_format="pcm16"), limit=2)
    assert [path.name for path in files.paths] == ["a.wav", "c.flac"] and len(files) == 2
    assert len(iter_folder(mixed_folder, WavCodec(), limit=None)) == 6


def test_encoded_yields_the_bytes_again_on_every_call_through_a_progress_wrapper(mixed_folder) -> None:
    files = iter_folder(mixed_folder, WavCodec(sample_format="pcm16"))
    wrapped = []

    def progress(items):
        wrapped.append(len(items))  # a progress bar learns its total from len()
        return items

    assert [len(data) for data in files.encoded()] == [200, 204, 202]
    assert [len(data) for data in files.encoded(progress)] == [200, 204, 202]  # read again, counted afresh
    assert wrapped == [6] and files.loaded == 3 and files.skipped_count == 3
