"""``bytemodels compress`` through a checkpoint's codec and framing: WAV clips restored byte for byte, raw bytes
where the codec cannot restore a file, image records, and ``eval`` reporting what compress achieves."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import soundfile
import torch

import bytecodecs
from bytemodels import CompressedFileError, Megabyte, MegabyteConfig, decompress, tokens
from bytemodels.binary import read_header
from bytemodels.cli import main
from model_helpers import use_input_skip

SHAPE = dict(patch_sizes=(4,), dims=(32, 16), layers=(2, 1), heads=(2, 1), max_seq_len=64)
WAV = {"name": "wav", "sample_rate": 8000, "channels": 1, "sample_format": "pcm16"}
IMAGE = {"name": "image", "width": 4, "height": 4, "mode": "L"}
TEXT = b"".join(b"The cat number %d sat on the mat and the dog sat on the log. " % (i % 7) for i in range(40))


def model_folder(path, codec: dict | None, layout: str, seed: int = 0, train_on: bytes | None = None):
    """A model folder with the metadata a recipe's checkpoint records (codec, layout)."""
    torch.manual_seed(seed)
    model = use_input_skip(Megabyte(MegabyteConfig.preset("tiny", **SHAPE)))
    if train_on is not None:  # a few seconds, so that specials get little probability (as in any trained model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        generator = np.random.default_rng(0)
        for _ in range(100):
            starts = generator.integers(0, len(train_on) - 63, size=8)
            ids = torch.tensor([[tokens.BOS_ID] + list(train_on[s:s + 63]) for s in starts])
            loss = model(ids, ids.masked_fill(ids == tokens.BOS_ID, tokens.PAD_ID)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval().save_pretrained(path)
    (path / "metadata.json").write_text(json.dumps({"codec": codec, "layout": layout}))
    return model


def write_clip(path, rate: int = 8000, seconds: float = 0.02):
    times = np.arange(int(rate * seconds)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * times) * 32767).astype(np.int16)
    soundfile.write(path, samples, rate, subtype="PCM_16")
    return path.read_bytes()


@pytest.fixture(scope="module")
def wav_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wav") / "model"
    return folder, model_folder(folder, WAV, "records")


def compress_output(capsys) -> str:
    return capsys.readouterr().out


def test_a_wav_clip_goes_through_the_codec_and_comes_back_byte_for_byte(wav_model, tmp_path, capsys):
    folder, model = wav_model
    original = write_clip(tmp_path / "clip.wav")
    assert main(["compress", "--model", str(folder), str(tmp_path / "clip.wav"), "-q"]) == 0
    assert "through the wav codec" in compress_output(capsys)
    blob = (tmp_path / "clip.wav.bmz").read_bytes()
    header = read_header(io.BytesIO(blob), "x")
    assert header.codec["name"] == "wav" and header.length == len(original) - 44  # the samples, not the WAV header
    assert (header.layout, header.tag) == ("records", bytecodecs.get_codec(**WAV).tag)
    (tmp_path / "clip.wav").unlink()
    assert main(["decompress", "--model", str(folder), str(tmp_path / "clip.wav.bmz"), "-q"]) == 0
    assert (tmp_path / "clip.wav").read_bytes() == original
    with pytest.raises(CompressedFileError, match="went through the 'wav' codec"):
        decompress(model, blob)  # the bytes alone are not the file: the API says how to restore it


def test_a_wav_the_codec_cannot_restore_goes_as_raw_bytes(wav_model, tmp_path, capsys):
    folder, _ = wav_model
    original = write_clip(tmp_path / "clip.wav", rate=16000)  # the codec resamples to 8 kHz: not the same file
    assert main(["compress", "--model", str(folder), str(tmp_path / "clip.wav"), "-q"]) == 0
    assert "as raw bytes" in compress_output(capsys)
    assert read_header(io.BytesIO((tmp_path / "clip.wav.bmz").read_bytes()), "x").codec is None
    assert main(["decompress", "--model", str(folder), str(tmp_path / "clip.wav.bmz"), "-q", "-o",
                 str(tmp_path / "back.wav")]) == 0
    assert (tmp_path / "back.wav").read_bytes() == original


def test_raw_flag_codes_the_files_bytes(wav_model, tmp_path, capsys):
    folder, _ = wav_model
    original = write_clip(tmp_path / "clip.wav")
    assert main(["compress", "--model", str(folder), str(tmp_path / "clip.wav"), "-q", "--raw"]) == 0
    assert "as raw bytes" in compress_output(capsys)
    assert main(["decompress", "--model", str(folder), str(tmp_path / "clip.wav.bmz"), "-q", "-o",
                 str(tmp_path / "back.wav")]) == 0
    assert (tmp_path / "back.wav").read_bytes() == original


def test_a_codec_blob_with_another_codec_is_one_line(wav_model, tmp_path, capsys):
    """The weights match but the checkpoint's codec options differ: one line, nothing written."""
    folder, _ = wav_model
    write_clip(tmp_path / "clip.wav")
    assert main(["compress", "--model", str(folder), str(tmp_path / "clip.wav"), "-q"]) == 0
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.json", "model.safetensors"):
        (other / name).write_bytes((folder / name).read_bytes())
    (other / "metadata.json").write_text(json.dumps({"codec": {**WAV, "sample_rate": 16000}, "layout": "records"}))
    capsys.readouterr()
    assert main(["decompress", "--model", str(other), str(tmp_path / "clip.wav.bmz"), "-q", "-o",
                 str(tmp_path / "out.wav")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "other options" in error and not (tmp_path / "out.wav").exists()


def test_image_records_frame_a_raw_pixel_file_and_eval_raw_scores_the_same(tmp_path, capsys):
    """A raw dump of 4x4 grey images is coded as 16-byte records, as the images recipe trains; ``eval --raw``
    scores those same records, so the two numbers agree to within the container's bytes."""
    folder = tmp_path / "model"
    pixels = bytes(np.random.default_rng(0).integers(0, 256, size=16 * 120, dtype=np.uint8))
    model_folder(folder, IMAGE, "records", train_on=pixels)
    (tmp_path / "images.gray").write_bytes(pixels)
    assert main(["compress", "--model", str(folder), str(tmp_path / "images.gray"), "-q"]) == 0
    assert "as raw bytes" in compress_output(capsys)
    stream = io.BytesIO((tmp_path / "images.gray.bmz").read_bytes())
    assert read_header(stream, "x").record_size == 16
    coded = len(stream.getvalue()) - stream.tell()
    assert main(["eval", str(folder), str(tmp_path / "images.gray"), "--raw", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)["total"]["bits_per_byte"]
    assert abs(8 * coded / len(pixels) - evaluated) < 0.1  # the coder's last words, the specials' share
    assert main(["decompress", "--model", str(folder), str(tmp_path / "images.gray.bmz"), "-q", "-o",
                 str(tmp_path / "back.gray")]) == 0
    assert (tmp_path / "back.gray").read_bytes() == pixels


def test_eval_reports_what_compress_achieves_on_text(tmp_path, capsys):
    folder = tmp_path / "model"
    model_folder(folder, {"name": "text"}, "packed", train_on=TEXT)
    source = tmp_path / "story.txt"
    source.write_bytes(TEXT * 4)
    assert main(["eval", str(folder), str(source), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)["total"]["bits_per_byte"]
    assert main(["compress", "--model", str(folder), str(source), "-q"]) == 0
    message = compress_output(capsys)
    assert "through the text codec" in message
    blob = (tmp_path / "story.txt.bmz").read_bytes()
    size = len(source.read_bytes())
    assert float(re.search(r"; ([0-9.]+) bits per byte", message).group(1)) == pytest.approx(8 * len(blob) / size,
                                                                                               abs=1e-3)
    stream = io.BytesIO(blob)
    read_header(stream, "x")
    assert stream.tell() < 80  # the container: magic, sizes, hashes, setup, codec
    coded = len(blob) - stream.tell()
    assert abs(8 * coded / size - evaluated) < 0.03, (evaluated, 8 * coded / size)


def test_eval_and_compress_split_stories_at_the_recorded_separator(tmp_path, capsys):
    """A checkpoint that recorded its documents' separator (the TinyStories recipe's): both commands score the
    stories as training documents, and agree to within the container's bytes and the stories' ends."""
    folder = tmp_path / "model"
    model_folder(folder, {"name": "text"}, "packed", train_on=TEXT)
    metadata = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**metadata, "separator": "<|endoftext|>"}))
    stories = [TEXT[i:i + 300] for i in range(0, 2400, 300)]
    source = tmp_path / "stories.txt"
    source.write_bytes(b"\n<|endoftext|>\n".join(stories) + b"\n<|endoftext|>\n")
    assert main(["eval", str(folder), str(source), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)["total"]
    assert main(["eval", str(folder), str(source), "--json", "--separator", ""]) == 0
    whole = json.loads(capsys.readouterr().out)["total"]
    assert evaluated["bytes"] == sum(map(len, stories)) and whole["bytes"] == len(source.read_bytes())
    assert main(["compress", "--model", str(folder), str(source), "-q"]) == 0
    capsys.readouterr()
    blob = (tmp_path / "stories.txt.bmz").read_bytes()
    stream = io.BytesIO(blob)
    header = read_header(stream, "x")
    assert header.separator == b"\n<|endoftext|>\n" and header.documents == len(stories) + 1
    coded_bits = 8 * (len(blob) - stream.tell())
    assert coded_bits < whole["bits_per_byte"] * whole["bytes"]  # cheaper than coding the separators' bytes
    assert abs(coded_bits - evaluated["bits_per_byte"] * evaluated["bytes"]) < 8 * 8 + 30 * len(stories)
    (tmp_path / "stories.txt").rename(tmp_path / "original.txt")
    assert main(["decompress", "--model", str(folder), str(tmp_path / "stories.txt.bmz"), "-q"]) == 0
    assert (tmp_path / "stories.txt").read_bytes() == (tmp_path / "original.txt").read_bytes()
