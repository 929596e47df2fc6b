"""Fault injection on the reading side: damaged checkpoints, bogus configs, bad JSON, huge requests.

Every load of a folder with recorded checksums verifies them; a config is checked against the weights' header
before anything is allocated; JSON problems are one line naming the file; generation and evaluation keep their
memory bounded by the model's window and the batch, not by the output or the file."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bytecodecs
from bytemodels import MegabyteConfig, tokens
from bytemodels.checkpoint import CheckpointError, save_checkpoint
from bytemodels.cli import main
from bytemodels.model import Megabyte
from bytemodels.pretrained import ModelFileError

REPO = Path(__file__).resolve().parents[1]
CONFIG = dict(dims=(32, 16), layers=(1, 1), heads=(2, 1), max_seq_len=64)
MEMORY_LIMIT = 3 << 30  # what torch's import tolerates under RLIMIT_AS, far below what the faults would reserve


def tiny_model(**overrides) -> Megabyte:
    torch.manual_seed(0)
    return Megabyte(MegabyteConfig.preset("tiny", **{**CONFIG, **overrides})).eval()


def write_checkpoint(root: Path, metadata: dict | None = None) -> Path:
    """A checkpoint folder as the Trainer writes it (with checksums in trainer_state.json)."""
    model = tiny_model()
    return save_checkpoint(root, 1, write_model=model.save_pretrained, optimizer_state={}, rng_tensors={},
                           state={"bytes_seen": 0}, train_config={}, metadata=metadata or {})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("faults") / "checkpoints")


@pytest.fixture
def model_folder(checkpoint, tmp_path) -> Path:
    """A copy of the checkpoint without trainer_state.json: a plain model folder (no checksums)."""
    folder = tmp_path / "model"
    shutil.copytree(checkpoint, folder)
    (folder / "trainer_state.json").unlink()
    return folder


def one_line_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("bytemodels: error: ") and err.count("\n") == 1, err
    for name in names:
        assert name in err, err
    return err


def run_limited(script: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter whose address space is capped at MEMORY_LIMIT."""
    prelude = f"import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


# -- 1. recorded checksums are never skipped ---------------------------------------------------------------------------
def flip_byte(path: Path, offset_from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF  # inside the tensor data, past the header: the file still parses
    path.write_bytes(bytes(data))


def test_flipped_weight_bytes_are_caught_by_every_load(checkpoint, tmp_path, capsys):
    damaged = tmp_path / "step_000001"
    shutil.copytree(checkpoint, damaged)
    flip_byte(damaged / "model.safetensors")
    (tmp_path / "file.bin").write_bytes(b"some bytes to score" * 4)
    for argv in (["sample", str(damaged), "--max-bytes", "4", "-o", str(tmp_path / "out.bin"), "--quiet"],
                 ["eval", str(damaged), str(tmp_path / "file.bin")], ["info", str(damaged)]):
        assert main(argv) == 2
        one_line_error(capsys, "model.safetensors", "checksum")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Megabyte.from_pretrained(damaged)


def test_a_plain_model_folder_loads_without_checksums(model_folder):
    assert Megabyte.from_pretrained(model_folder).config.max_seq_len == CONFIG["max_seq_len"]


# -- 2. eval that computes nan or inf is an error ----------------------------------------------------------------------
def test_eval_of_non_finite_weights_is_an_error(tmp_path, capsys):
    model = tiny_model()
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "file.bin").write_bytes(b"abc" * 30)
    assert main(["eval", str(tmp_path / "model"), str(tmp_path / "file.bin")]) == 2
    one_line_error(capsys, "file.bin", "not finite")


# -- 3. config checked before allocating -------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [("layers", [10_000_000, 1]), ("dims", [10**9, 16]),
                                          ("num_tags", 10**12), ("max_seq_len", 10**12)])
def test_a_bogus_config_fails_fast_without_allocating(model_folder, tmp_path, field, value):
    config = json.loads((model_folder / "config.json").read_text())
    (model_folder / "config.json").write_text(json.dumps({**config, field: value}))
    out = tmp_path / "out.bin"
    done = run_limited(f"""
        from bytemodels.cli import main
        codes = [main(["info", {str(model_folder)!r}]),
                 main(["sample", {str(model_folder)!r}, "--max-bytes", "4", "--quiet", "-o", {str(out)!r}])]
        print(codes)
    """)
    assert done.stdout.strip() == "[2, 2]", done.stdout + done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and all("config.json" in line and field in line for line in lines), done.stderr[-2000:]


def test_a_config_that_does_not_match_the_weights_header_is_refused_before_building(model_folder, monkeypatch):
    config = json.loads((model_folder / "config.json").read_text())
    (model_folder / "config.json").write_text(json.dumps({**config, "layers": [1000, 1]}))
    built = []
    monkeypatch.setattr(Megabyte, "__init__", lambda self, *a, **k: built.append(a) or pytest.fail("built"))
    with pytest.raises(ModelFileError, match="stage 0 has 1 blocks"):
        Megabyte.from_pretrained(model_folder)
    assert main(["info", str(model_folder)]) == 2 and not built


# -- 4. bad JSON is one line naming the file ---------------------------------------------------------------------------
BAD_FILES = [
    ("config.json", lambda config: json.dumps(config).replace('"rope_base": 10000.0', '"rope_base": Infinity')),
    ("config.json", lambda config: json.dumps(config).replace('"dropout": 0.0', '"dropout": NaN')),
    ("config.json", lambda config: "[" * 100_000),
    ("config.json", lambda config: json.dumps({**config, "layers": "x"})),
    ("config.json", lambda config: json.dumps({**config, "layers": [1e400, 1]})),
    ("metadata.json", lambda config: json.dumps({"codec": 5})),
    ("metadata.json", lambda config: json.dumps({"codec": {"name": []}})),
    ("metadata.json", lambda config: json.dumps({"codecs": {"text": {"name": "text", "strict": {}}}})),
]


@pytest.mark.parametrize("name, content", BAD_FILES)
def test_bad_json_is_one_line_naming_the_file(model_folder, tmp_path, capsys, name, content):
    config = json.loads((model_folder / "config.json").read_text())
    (model_folder / name).write_text(content(config))
    (tmp_path / "file.txt").write_text("some text to score")
    modality = ["--modality", "text"] if "codecs" in content(config) else []
    commands = [["eval", str(model_folder), str(tmp_path / "file.txt"), *modality],
                ["sample", str(model_folder), "--max-bytes", "4", "--quiet", "-o", str(tmp_path / "out.txt"),
                 *modality]]
    if not modality:  # info shows a codec's options without building it
        commands.append(["info", str(model_folder)])
    for argv in commands:
        assert main(argv) == 2
        one_line_error(capsys, name)
    if name == "config.json":
        with pytest.raises(ValueError, match="config.json"):
            Megabyte.from_pretrained(model_folder)


# -- 5. generation in bounded memory -----------------------------------------------------------------------------------
def test_generation_past_three_windows_keeps_the_context_within_the_window(monkeypatch):
    from bytemodels import layers, sampling

    model = tiny_model(max_seq_len=32, patch_sizes=(4,), heads=(2, 2))
    mask = sampling.producible_mask  # EOS never drawn: the whole output is produced
    monkeypatch.setattr(sampling, "producible_mask", lambda *args: mask(*args).index_fill(
        0, torch.tensor([tokens.EOS_ID]), -float("inf")))
    slots, contexts = [], []
    original_cache, original_forward = layers.StaticCache.__init__, Megabyte.forward
    monkeypatch.setattr(layers.StaticCache, "__init__",
                        lambda self, blocks, heads, dim, size, *rest: slots.append(size)
                        or original_cache(self, blocks, heads, dim, size, *rest))
    monkeypatch.setattr(Megabyte, "forward", lambda self, ids, *rest: contexts.append(ids.shape[1])
                        or original_forward(self, ids, *rest))
    cached = model.generate(b"hi", 100, temperature=0)  # prompt and output span over three windows of 32
    uncached = model.generate(b"hi", 100, temperature=0, use_cache=False)
    assert cached == uncached and len(cached) == 100
    assert max(slots) <= 32 // 4 + 1  # the global slots: one per patch of the window, and one more
    assert slots.count(32 // 4 + 1) > 1  # the global stage's cache, made again for each window
    assert max(contexts) <= 32  # the uncached path: the context and the placeholder for the next id


def test_a_huge_request_streams_to_the_file_in_bounded_memory(checkpoint, tmp_path):
    out = tmp_path / "out.bin"
    prelude = f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))\n"
    # EOS is never drawn, so only the kill ends the run: a fresh model ends early at random.
    never_eos = ("import torch\nfrom bytemodels import sampling, tokens\nmask = sampling.producible_mask\n"
                 "sampling.producible_mask = lambda *a: mask(*a).index_fill(0, torch.tensor([tokens.EOS_ID]), "
                 "-float('inf'))\n")
    script = prelude + never_eos + (f"import sys\nfrom bytemodels.cli import main\n"
                        f"sys.exit(main(['sample', {str(checkpoint)!r}, '--max-bytes', str(10**12), '--quiet', "
                        f"'-o', {str(out)!r}]))")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            if out.is_file() and out.stat().st_size >= 300:
                break
            time.sleep(0.2)
        running = process.poll() is None
    finally:
        process.kill()
        _, err = process.communicate()
    assert running and out.stat().st_size >= 300, err[-2000:]


def test_a_media_codec_caps_max_bytes_in_one_line(tmp_path):
    wav = write_checkpoint(tmp_path / "checkpoints", {"codec": bytecodecs.get_codec("wav").config()})
    done = run_limited(f"""
        from bytemodels.cli import main
        print(main(["sample", {str(wav)!r}, "--max-bytes", str(10**12), "-o", {str(tmp_path / "out.wav")!r}]))
    """)
    assert done.stdout.strip() == "2", done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and "--max-bytes" in done.stderr and "67,108,864" in done.stderr


# -- 6. eval in bounded memory, the same numbers -----------------------------------------------------------------------
def reference_bits(model: Megabyte, data: bytes) -> float:
    """Bits of a raw file under the model as eval computed them before: BOS, the bytes, EOS, PAD-filled windows."""
    window = model.config.max_seq_len
    stream = [tokens.BOS_ID, *data, tokens.EOS_ID]
    stream += [tokens.PAD_ID] * (-len(stream) % window)
    ids = torch.tensor(stream).view(-1, window)
    with torch.no_grad():
        logits = model(ids).logits.float()
    targets = ids.masked_fill(ids >= tokens.NUM_BYTES, tokens.PAD_ID)
    nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=tokens.PAD_ID,
                           reduction="sum")
    return float(nats) / math.log(2)


def test_eval_reads_windows_in_batches_from_a_memory_map_and_gives_the_same_numbers(model_folder, tmp_path,
                                                                                      capsys, monkeypatch):
    from bytemodels.data import Windows

    data = bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8))
    (tmp_path / "file.bin").write_bytes(data)
    expected = reference_bits(Megabyte.from_pretrained(model_folder), data) / len(data)

    def refuse(*args, **kwargs):
        raise AssertionError("read whole")

    monkeypatch.setattr(Path, "read_bytes", refuse)  # a raw file is memory-mapped, never read whole
    monkeypatch.setattr(Windows, "fixed", refuse)  # windows are read a batch at a time
    assert main(["eval", str(model_folder), str(tmp_path / "file.bin"), "--json", "--batch-size", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["files"][0]["bytes"] == len(data)
    assert result["files"][0]["bits_per_byte"] == pytest.approx(expected, rel=1e-5)


def test_eval_of_a_text_checkpoint_encodes_the_file_a_piece_at_a_time(checkpoint, tmp_path, capsys, monkeypatch):
    """A text file is encoded in pieces into a scratch file, never loaded whole; the score is the same."""
    from bytecodecs import TextCodec

    folder = tmp_path / "text-checkpoint"
    write_checkpoint(folder, metadata={"codec": TextCodec().config()})
    text = "Once upon a time, a cat sat.\n" * 12
    (tmp_path / "story.txt").write_text(text, encoding="utf-8")
    tag = tokens.tag_id(TextCodec.tag, MegabyteConfig.preset("tiny").num_tags)
    model = tiny_model()
    window = model.config.max_seq_len
    stream = [tokens.BOS_ID, tag, *text.encode(), tokens.EOS_ID]
    ids = torch.tensor(stream + [tokens.PAD_ID] * (-len(stream) % window)).view(-1, window)
    with torch.no_grad():
        logits = model(ids).logits.float()
    targets = ids.masked_fill(ids >= tokens.NUM_BYTES, tokens.PAD_ID)
    expected = float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                     ignore_index=tokens.PAD_ID, reduction="sum")) / math.log(2) / len(text)

    def refuse(*args, **kwargs):
        raise AssertionError("the file was read whole")

    monkeypatch.setattr(TextCodec, "encode_file", refuse)
    monkeypatch.setattr(TextCodec, "load", refuse)
    monkeypatch.setattr("bytecodecs.text.CHUNK_BYTES", 64)  # many pieces, a character cut between some
    assert main(["eval", str(folder), str(tmp_path / "story.txt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["files"][0]["bytes"] == len(text.encode())
    assert result["files"][0]["bits_per_byte"] == pytest.approx(expected, rel=1e-5)
