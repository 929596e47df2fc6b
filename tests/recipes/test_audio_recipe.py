"""``python -m recipes.audio``: a smoke run (train, .wav samples at the configured rate, FLAC table, resume),
the FLAC comparison, hub rows read from raw file bytes, and the fast offline failure of the hub loader."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # recipes/ runs from the checkout; it is never installed into site-packages
    sys.path.insert(0, str(REPO))

import bytecodecs  # noqa: E402
from bytemodels.app import hub  # noqa: E402
from bytemodels.data import covered_documents, whole_document_windows  # noqa: E402
from recipes import audio  # noqa: E402

# A model small enough that a few steps take a second or two on two CPU cores.
TINY_FLAGS = ["--dims", "32,16", "--layers", "1,1", "--heads", "2,1", "--max-seq-len", "128", "--batch-size", "2",
              "--warmup-steps", "1", "--num-samples", "2", "--sample-seconds", "0.02", "--prompt-seconds", "0.01",
              "--no-progress"]


def tone(seconds: float, frequency: float, rate: int = 8000, seed: int = 0) -> np.ndarray:
    """A decaying tone with a little noise, as int16 samples."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.02, t.shape)
    return (np.clip(0.5 * np.sin(2 * np.pi * frequency * t) * np.exp(-3 * t) + noise, -1, 1) * 32767).astype(np.int16)


def write_clips(folder: Path, count: int = 10) -> Path:
    """``count`` short 8 kHz 16-bit WAV files, some in a subfolder (the folder is searched recursively)."""
    for index in range(count):
        path = folder / ("more" if index % 3 == 0 else "") / f"clip_{index:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, tone(0.1 + 0.02 * index, 200 + 40 * index, seed=index), 8000, subtype="PCM_16")
    return folder


def run_recipe(*flags: str) -> None:
    audio.main([*flags])


def test_train_writes_wavs_at_the_configured_rate_then_resumes(tmp_path, capsys):
    clips = write_clips(tmp_path / "clips")
    out = tmp_path / "run"
    # 4 kHz 16-bit: the clips are resampled, and a patch of 8 bytes holds 4 whole sample frames.
    run_recipe("--data", str(clips), "--out", str(out), "--sample-rate", "4000", "--sample-format", "pcm16",
               "--val-fraction", "0.3", "--max-steps", "2", *TINY_FLAGS)
    printed = capsys.readouterr().out
    assert f"run folder: {out}" in printed and "FLAC" in printed

    step = out / "samples" / "step_000002"
    max_frames = round(0.02 * 4000)
    for index in range(2):
        info = soundfile.info(step / f"sample_{index:02d}.wav")
        assert info.samplerate == 4000 and info.channels == 1 and info.frames <= max_frames
        continued = soundfile.info(step / f"continuation_{index:02d}.wav")
        prompt_frames = round(0.01 * 4000)  # the held-out start is kept whole in front of the continuation
        assert continued.samplerate == 4000 and prompt_frames <= continued.frames <= prompt_frames + max_frames
        assert soundfile.info(out / "samples" / f"held_out_{index:02d}.wav").samplerate == 4000

    report = json.loads((out / "compression.json").read_text())
    assert report["clips"] >= 1 and 0 < report["flac_file_bits_per_byte"] < 16
    assert report["flac_frame_bits_per_byte"] < report["flac_file_bits_per_byte"]
    assert np.isfinite(report["model_bits_per_byte"])
    metadata = json.loads((out / "checkpoints" / "step_000002" / "metadata.json").read_text())
    assert metadata["codec"] == {"name": "wav", "sample_rate": 4000, "channels": 1, "sample_format": "pcm16"}
    assert metadata["layout"] == "records"

    # Resume: no data or codec flags needed, the run goes on from step 2 in the same folder.
    run_recipe("--resume", "--out", str(out), "--max-steps", "3", "--no-progress")
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000003"
    steps = [json.loads(line).get("step") for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 3 in steps and (out / "samples" / "step_000003" / "sample_00.wav").is_file()


def test_a_second_run_into_the_same_folder_needs_resume(tmp_path):
    clips = write_clips(tmp_path / "clips", count=4)
    out = tmp_path / "run"
    run_recipe("--data", str(clips), "--out", str(out), "--val-fraction", "0.5", "--max-steps", "1", *TINY_FLAGS)
    with pytest.raises(SystemExit, match="already holds a run; pass --resume"):
        run_recipe("--data", str(clips), "--out", str(out), "--max-steps", "1", *TINY_FLAGS)
    with pytest.raises(SystemExit, match="--resume keeps the model and codec of the checkpoint; these flags differ "
                                         "from it: --dims 64,32"):
        run_recipe("--resume", "--out", str(out), "--dims", "64,32")


def test_resume_takes_the_command_line_the_run_was_started_with(tmp_path):
    clips = write_clips(tmp_path / "clips", count=4)
    out = tmp_path / "run"
    started = ["--data", str(clips), "--out", str(out), "--val-fraction", "0.5", *TINY_FLAGS]
    run_recipe(*started, "--max-steps", "1")
    run_recipe(*started, "--max-steps", "2", "--resume")
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000002"


def test_patches_must_hold_whole_sample_frames(tmp_path):
    clips = write_clips(tmp_path / "clips", count=2)
    with pytest.raises(SystemExit, match="--patch-sizes 5 would split 2-byte sample frames"):
        run_recipe("--data", str(clips), "--out", str(tmp_path / "run"), "--sample-format", "pcm16",
                   "--patch-sizes", "5", "--max-seq-len", "20", "--max-steps", "1")


def test_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no such folder"):
        run_recipe("--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), "--max-steps", "1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no audio files"):
        run_recipe("--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run"), "--max-steps", "1")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.wav").write_bytes(b"not audio")  # every file skipped: nothing to train on
    with pytest.raises(SystemExit, match=r"^python -m recipes.audio: error: no documents to build dataset 'audio'"):
        run_recipe("--data", str(tmp_path / "broken"), "--out", str(tmp_path / "run"), "--max-steps", "1",
                   "--cache-dir", str(tmp_path / "cache"))


def test_training_flags_are_checked_before_the_clips_are_read(tmp_path):
    with pytest.raises(SystemExit, match=r"^python -m recipes.audio: error: eval_windows=0 must be at least 1$"):
        run_recipe("--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), "--eval-windows", "0")


# -- the FLAC comparison ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sample_format, channels", [("mulaw", 1), ("linear8", 1), ("pcm16", 1), ("pcm16", 2)])
def test_flac_stores_exactly_the_codec_bytes(sample_format, channels):
    codec = bytecodecs.get_codec("wav", sample_format=sample_format, channels=channels)
    data = codec.encode((tone(0.3, 330), 8000))
    flac = audio.flac_bytes(data, codec)
    samples, rate = soundfile.read(io.BytesIO(flac), dtype="int16", always_2d=True)
    assert rate == 8000 and samples.shape == (len(data) // codec.bytes_per_frame, channels)
    if sample_format == "pcm16":
        assert samples.astype("<i2").tobytes() == data
    else:  # 8-bit samples come back in the high byte of int16
        assert ((samples.astype(np.int32) // 256) + 128).astype(np.uint8).tobytes() == data
    sizes = audio.flac_size([data, data], codec)
    assert sizes["codec_bytes"] == 2 * len(data) and sizes["flac_file_bytes"] == 2 * len(flac)
    assert 0 < sizes["flac_frame_bytes"] < sizes["flac_file_bytes"]


def test_flac_compresses_real_spoken_digits(shared_data):
    codec = bytecodecs.get_codec("wav")
    recordings = sorted((shared_data / "audio" / "fsdd" / "recordings").glob("*_0.wav"))[:5]
    clips = [codec.encode_file(path) for path in recordings]
    report = audio.compression_report(5.0, clips, codec)
    assert report["clips"] == 5 and 2.0 < report["flac_frame_bits_per_byte"] < 8.0


def test_validation_windows_cover_whole_clips():
    lengths = np.array([10, 30, 5])  # patch 8: records of 24, 48 and 16 ids; windows of 16: 2, 3 and 1
    assert whole_document_windows(lengths, 8, 16, cap=5) == 5
    assert covered_documents(lengths, 8, 16, 5) == 2
    assert whole_document_windows(lengths, 8, 16, cap=1) == 2  # at least the first clip, whole


# -- the Hugging Face hub ------------------------------------------------------------------------------------
def test_hub_offline_mode_fails_fast_naming_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(SystemExit) as failure:
        run_recipe("--hub-dataset", "someone/speech", "--out", str(tmp_path / "run"), "--max-steps", "1")
    message = str(failure.value)
    assert "cannot download someone/speech from the Hugging Face hub (HF_HUB_OFFLINE is set)" in message
    assert "pass --data" in message and "\n" not in message
    assert time.monotonic() - start < 10


def test_hub_rows_are_decoded_from_raw_file_bytes(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(0.2, 440), 8000, format="WAV", subtype="PCM_16")
    rows = [{"bytes": buffer.getvalue(), "path": None}, {"bytes": b"not audio", "path": None}]
    # Built as plain bytes and paths, then typed as audio (encoding into an Audio column needs torchcodec).
    storage = datasets.Features({"label": datasets.Value("int32"),
                                 "speech": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}})
    table = datasets.Dataset.from_dict({"label": [1, 2], "speech": rows}, features=storage)
    table = table.cast_column("speech", datasets.Audio(decode=False))
    monkeypatch.setattr(hub, "load_hub_split", lambda name, split, config: table)
    codec = bytecodecs.get_codec("wav", sample_format="pcm16")
    key, read = audio.hub_clips("someone/speech", "train", None, None, codec, limit=None)
    clips = list(read())  # the unreadable row is skipped, not fatal
    assert key["hub"] == "someone/speech"
    assert clips == [codec.encode((tone(0.2, 440), 8000))]
