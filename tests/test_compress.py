"""Lossless compression with a byte model: the .bmz round trip, damaged and foreign input, the command line."""

from __future__ import annotations

import io
import math
import os
import random
import sys

import numpy as np
import pytest
import torch

from bytemodels import CompressedFileError, Megabyte, MegabyteConfig, compress, decompress, tokens
from bytemodels.cli import main
from bytemodels.binary import read_header
from bytemodels.compress import quantised_frequencies
from model_helpers import use_input_skip

# max_seq_len 64: chunks longer than that exercise the decoder's window crop
SHAPE = dict(patch_sizes=(4,), dims=(32, 16), layers=(2, 1), heads=(2, 1), max_seq_len=64)
TEXT = b"".join(b"The cat number %d sat on the mat and the dog sat on the log. " % (i % 7) for i in range(40))


def tiny_model(seed: int = 0) -> Megabyte:
    torch.manual_seed(seed)
    return use_input_skip(Megabyte(MegabyteConfig.preset("tiny", **SHAPE)).eval())


@pytest.fixture(scope="module")
def model() -> Megabyte:
    return tiny_model()


@pytest.fixture(scope="module")
def trained() -> Megabyte:
    """A tiny model trained briefly on TEXT (a few seconds): it must then code TEXT in fewer bytes."""
    torch.manual_seed(1)
    model = Megabyte(MegabyteConfig.preset("tiny", **SHAPE))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = random.Random(0)
    for _ in range(120):
        starts = [generator.randrange(len(TEXT) - 63) for _ in range(8)]
        ids = torch.tensor([[tokens.BOS_ID] + list(TEXT[s:s + 63]) for s in starts])
        loss = model(ids, ids.masked_fill(ids == tokens.BOS_ID, tokens.PAD_ID)).loss  # logits[:, t] score ids[:, t]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


FRAMINGS = {"packed": {}, "packed, tag": {"tag": 2}, "records": {"layout": "records"},
            "records of 50, tag": {"layout": "records", "record_size": 50, "tag": 1}}


@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 3, TEXT[:700]], ids=["empty", "one", "all", "text"])
@pytest.mark.parametrize("framing", FRAMINGS.values(), ids=FRAMINGS.keys())
@pytest.mark.parametrize("batch_size", [1, 3])
def test_round_trip(model, data, framing, batch_size):
    blob = compress(model, data, batch_size=batch_size, **framing)
    assert decompress(model, blob) == data


SEPARATOR = b"\n<|endoftext|>\n"
DOCUMENTS = {"stories": SEPARATOR.join([TEXT[:50], TEXT[100:300], b"", TEXT[:10]]) + SEPARATOR,
             "leading": SEPARATOR + TEXT[:200], "only the separator": SEPARATOR, "empty": b"",
             "three separators": SEPARATOR * 3, "none": TEXT[:500], "long story": TEXT[:300] + SEPARATOR + TEXT}


@pytest.mark.parametrize("data", DOCUMENTS.values(), ids=DOCUMENTS.keys())
@pytest.mark.parametrize("tag,batch_size", [(None, 1), (2, 3)])
def test_documents_round_trip(model, data, tag, batch_size):
    """Documents between separators are coded as training documents, each end as EOS; windows that start at a
    BOS, at the tag after it or inside a document all decode."""
    blob = compress(model, data, separator=SEPARATOR, tag=tag, batch_size=batch_size)
    header = read_header(io.BytesIO(blob), "x")
    assert (header.separator, header.documents) == (SEPARATOR, data.count(SEPARATOR) + 1)
    assert decompress(model, blob) == data


def test_documents_cost_less_than_their_separators(trained):
    """A separator's 15 bytes cost the model far more than the end of a document does."""
    stories = SEPARATOR.join(TEXT[i:i + 180] for i in range(0, 1800, 180))
    assert len(compress(trained, stories, separator=SEPARATOR)) < len(compress(trained, stories)) - 9 * 4


def test_random_bytes_round_trip_across_several_blocks(model):
    data = random.Random(3).randbytes(530)  # not a multiple of the record; 6 records (windows) in blocks of 4 and 2
    blob = compress(model, data, layout="records", record_size=97, batch_size=4)
    header = read_header(io.BytesIO(blob), "x")
    assert (header.length, header.record_size, header.batch_size) == (530, 97, 4)
    assert decompress(model, blob) == data


def test_frequencies_are_positive_and_sum_to_the_precision():
    logits = torch.tensor([[0.0] * 272, [1000.0] + [-1000.0] * 271])
    frequencies = quantised_frequencies(logits)
    assert frequencies.shape == (2, 256)
    assert (frequencies >= 1).all() and (frequencies.sum(axis=1) == 1 << 24).all()


def test_a_trained_model_compresses_text(trained):
    blob = compress(trained, TEXT)
    assert len(blob) < len(TEXT) / 2
    assert decompress(trained, blob) == TEXT


def window_bits(model, data: bytes, framing: dict) -> float:
    """The bits a perfect coder spends on ``data`` under the model's byte probabilities, from one parallel forward
    of each window (the windows validation scores), the byte logits renormalised as the coder does."""
    from bytemodels.data import document_windows

    config, bits = model.config, 0.0
    size = framing.get("record_size") or len(data)
    for start in range(0, len(data), size):
        windows = document_windows(np.frombuffer(data[start:start + size], np.uint8), framing.get("tag"),
                                   framing.get("layout", "packed"), config.max_seq_len, config.patch_size)
        ids = torch.from_numpy(np.stack([windows.window(i) for i in range(len(windows))]))
        with torch.inference_mode():
            logits = model(ids).logits[..., :256].double()
        is_byte = ids < 256
        log_probs = torch.log_softmax(logits, dim=-1).gather(-1, ids.clamp(max=255)[..., None])[..., 0]
        bits -= float(log_probs[is_byte].sum()) / math.log(2)
    return bits


@pytest.mark.parametrize("which", ["trained", "model"])
@pytest.mark.parametrize("framing", FRAMINGS.values(), ids=FRAMINGS.keys())
def test_coded_bytes_match_the_models_cross_entropy(which, framing, request):
    """The random model spends about 8 bits a byte, the trained one a fraction of a bit: either way the blocks
    hold what the model's probabilities cost, within the coder's last words and the 2**-24 floors."""
    model = request.getfixturevalue(which)
    data = TEXT[:600]
    blob = compress(model, data, batch_size=4, **framing)
    stream = io.BytesIO(blob)
    read_header(stream, "x")
    coded, blocks = len(blob) - stream.tell(), -(-len(data) // 64 // 4) + 2
    bits = window_bits(model, data, framing)
    assert bits / 8 <= coded <= bits / 8 + 10 * blocks + 0.002 * len(data)


def test_another_model_is_refused(model):
    blob = compress(model, b"hello")
    with pytest.raises(CompressedFileError, match="another model"):
        decompress(tiny_model(seed=5), blob)


def test_a_foreign_file_is_refused(model):
    with pytest.raises(CompressedFileError, match="not a .bmz file"):
        decompress(model, b"\x1f\x8b\x08\x00 a gzip file")


@pytest.mark.parametrize("keep", [0, 3, 5, 12, 40, -1])
def test_a_truncated_file_is_refused(model, keep):
    blob = compress(model, TEXT[:300], batch_size=2)
    cut = blob[:keep] if keep >= 0 else blob[:-1]
    with pytest.raises(CompressedFileError, match="truncated|not a .bmz"):
        decompress(model, cut)


def test_every_flipped_bit_is_refused_or_harmless(model):
    data = TEXT[:200]
    blob = compress(model, data, batch_size=2)
    generator = random.Random(7)
    for position in [generator.randrange(len(blob)) for _ in range(40)] + [len(blob) - 1, 9, 20]:
        damaged = bytearray(blob)
        damaged[position] ^= 1 << generator.randrange(8)
        try:
            result = decompress(model, bytes(damaged))
        except CompressedFileError as error:
            assert "\n" not in str(error)
        else:
            assert result == data  # a flip in a coder's unused tail bits: still the original, never other bytes


def test_trailing_data_is_refused(model):
    with pytest.raises(CompressedFileError, match="after the last block"):
        decompress(model, compress(model, b"abc") + b"\0")


def test_a_setup_that_computes_other_probabilities_is_refused(model, monkeypatch):
    blob = compress(model, b"hello world")
    compress_module = sys.modules["bytemodels.compress"]  # the package's ``compress`` is the function

    original = compress_module.quantised_frequencies

    def shifted(logits, with_eos=False):  # another torch or CPU kernel: logits off by a rounding error
        return original(logits + 1e-3 * torch.arange(logits.shape[-1]), with_eos)

    monkeypatch.setattr(compress_module, "quantised_frequencies", shifted)
    with pytest.raises(CompressedFileError, match="other probabilities"):
        decompress(model, blob)


# -- the command line -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(folder)
    return folder


def test_cli_round_trip_keeps_the_input(model_dir, tmp_path, capsys):
    source = tmp_path / "story.txt"
    source.write_bytes(TEXT[:300])
    assert main(["compress", "--model", str(model_dir), str(source), "-q", "--batch-size", "2"]) == 0
    packed = tmp_path / "story.txt.bmz"
    assert packed.is_file() and source.is_file()
    source.rename(tmp_path / "original.txt")
    assert main(["decompress", "--model", str(model_dir), str(packed), "-q"]) == 0
    assert source.read_bytes() == TEXT[:300] and packed.is_file()


def test_cli_refuses_to_overwrite_without_force(model, model_dir, tmp_path, capsys):
    source = tmp_path / "a.bin"
    source.write_bytes(b"abc")
    (tmp_path / "a.bin.bmz").write_bytes(b"old")
    assert main(["compress", "--model", str(model_dir), str(source), "-q"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "a.bin.bmz").read_bytes() == b"old"
    assert main(["compress", "--model", str(model_dir), str(source), "-q", "--force"]) == 0
    assert decompress(model, (tmp_path / "a.bin.bmz").read_bytes()) == b"abc"


def test_cli_stdout(model_dir, tmp_path, capfdbinary):
    source = tmp_path / "a.bin"
    source.write_bytes(b"hello hello")
    assert main(["compress", "--model", str(model_dir), str(source), "-q", "-c"]) == 0
    blob = capfdbinary.readouterr().out
    (tmp_path / "b.bmz").write_bytes(blob)
    assert not (tmp_path / "a.bin.bmz").exists()
    assert main(["decompress", "--model", str(model_dir), str(tmp_path / "b.bmz"), "-q", "-c"]) == 0
    assert capfdbinary.readouterr().out == b"hello hello"


def test_cli_damaged_file_is_one_line_and_writes_nothing(model_dir, tmp_path, capsys):
    source = tmp_path / "a.bin"
    source.write_bytes(TEXT[:100])
    assert main(["compress", "--model", str(model_dir), str(source), "-q"]) == 0
    packed = tmp_path / "a.bin.bmz"
    packed.write_bytes(packed.read_bytes()[:-3])
    source.unlink()
    capsys.readouterr()
    assert main(["decompress", "--model", str(model_dir), str(packed), "-q"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("bytemodels: error: ") and error.count("\n") == 1 and "truncated" in error
    assert sorted(os.listdir(tmp_path)) == ["a.bin.bmz"]


def test_cli_decompress_needs_the_suffix_or_an_output(model_dir, tmp_path, capsys):
    source = tmp_path / "a.bin"
    source.write_bytes(b"x")
    assert main(["decompress", "--model", str(model_dir), str(source), "-q"]) == 2
    assert "no .bmz suffix" in capsys.readouterr().err


def test_a_zero_byte_block_record_is_refused(model):
    """A block whose coded length is 0 decodes to bytes that fail the original's checksum: an error, not output."""
    from bytemodels.binary import write_block, write_header

    header = read_header(io.BytesIO(compress(model, b"abcde")), "x")
    forged = io.BytesIO()
    write_header(forged, header)
    write_block(forged, b"")
    with pytest.raises(CompressedFileError, match="does not match the original"):
        decompress(model, forged.getvalue())


def test_a_header_claiming_a_huge_length_allocates_nothing(model):
    """Memory follows the blocks present, not the length a header claims: 2**50 bytes and no blocks is a
    truncated file at once."""
    import dataclasses

    from bytemodels.binary import write_header

    header = read_header(io.BytesIO(compress(model, b"abcde")), "x")
    for framing in ({}, {"layout": "records", "record_size": 7}):
        forged = io.BytesIO()
        write_header(forged, dataclasses.replace(header, length=1 << 50, **framing))
        with pytest.raises(CompressedFileError, match="truncated .bmz file .it ends inside block 0"):
            decompress(model, forged.getvalue())


def test_a_disk_full_leaves_no_output(model, tmp_path, monkeypatch):
    import errno

    from bytemodels.compress import decompress_file

    packed = tmp_path / "a.bmz"
    packed.write_bytes(compress(model, b"some bytes"))

    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        decompress_file(model, packed, tmp_path / "a")
    assert sorted(os.listdir(tmp_path)) == ["a.bmz"]


def test_files_are_read_from_a_memory_map(model, tmp_path, monkeypatch):
    """Memory follows the block, not the file: the file is mapped, never read whole."""
    from pathlib import Path

    from bytemodels.compress import compress_file

    source = tmp_path / "big.bin"
    source.write_bytes(random.Random(1).randbytes(900))
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} read whole"))
    out = io.BytesIO()
    compress_file(model, source, out, batch_size=2)
    monkeypatch.undo()
    assert decompress(model, out.getvalue()) == source.read_bytes()


def test_cli_wrong_model_and_conflicting_flags_are_one_line(model_dir, tmp_path, capsys):
    source = tmp_path / "a.bin"
    source.write_bytes(b"abc")
    other = tmp_path / "other"
    tiny_model(seed=9).save_pretrained(other)
    assert main(["compress", "--model", str(model_dir), str(source), "-q"]) == 0
    packed = tmp_path / "a.bin.bmz"
    umask = os.umask(0)
    os.umask(umask)
    assert packed.stat().st_mode & 0o777 == 0o666 & ~umask  # a new file's usual mode, not mkstemp's 0600
    capsys.readouterr()
    assert main(["decompress", "--model", str(other), str(packed), "-q", "-o", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "another model" in error and not (tmp_path / "out").exists()
    assert main(["decompress", "--model", str(model_dir), str(packed), "-q", "-c", "-o", "x"]) == 2
    assert "not both" in capsys.readouterr().err
