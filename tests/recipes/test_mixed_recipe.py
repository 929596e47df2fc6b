"""``python -m recipes.mixed``: one model on text, audio and images; every document carries its codec's tag,
sampling from a tag writes that modality in its own format, and a run resumes."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # recipes/ runs from the checkout; it is never installed into site-packages
    sys.path.insert(0, str(REPO))

import bytecodecs  # noqa: E402
from bytemodels import tokens  # noqa: E402
from bytemodels.app.recipe import RecipeError  # noqa: E402
from bytemodels.data import ByteDataset  # noqa: E402
from recipes import mixed  # noqa: E402

TINY_FLAGS = ["--dims", "32,16", "--layers", "1,1", "--heads", "2,1", "--batch-size", "2", "--warmup-steps", "1",
              "--num-samples", "1", "--text-bytes", "20", "--sample-seconds", "0.01", "--no-progress"]


@pytest.fixture
def sources(tmp_path) -> dict[str, Path]:
    """Generated stories (one .txt with <|endoftext|> markers), 8 kHz clips and 8x8 grey images."""
    stories = [f"Story {i}: the cat sat on mat number {i}." for i in range(8)]
    text = tmp_path / "stories.txt"
    text.write_text("".join(story + "\n<|endoftext|>\n" for story in stories), encoding="utf-8")
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(8):
        t = np.arange(400 + 40 * i) / 8000
        samples = (0.4 * np.sin(2 * np.pi * (200 + 50 * i) * t) * 32767).astype(np.int16)
        soundfile.write(clips / f"clip_{i}.wav", samples, 8000, subtype="PCM_16")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "images.npz", images=rng.integers(0, 256, (8, 8, 8), dtype=np.uint8))
    return {"text": text, "audio": clips, "images": tmp_path / "images.npz"}


def test_one_model_learns_every_modality_and_writes_each_in_its_format(sources, tmp_path, capsys):
    out = tmp_path / "run"
    mixed.main(["--text", str(sources["text"]), "--audio", str(sources["audio"]), "--images", str(sources["images"]),
                "--sample-rate", "4000", "--out", str(out), "--val-fraction", "0.25", "--max-steps", "2", *TINY_FLAGS])
    printed = capsys.readouterr().out
    counts = re.search(r"train: (\d+) text, (\d+) audio, (\d+) image documents", printed)
    assert counts and sum(map(int, counts.groups())) == 18 and min(map(int, counts.groups())) > 0
    assert "held out: 6; patch 8 bytes" in printed  # a row of the 8x8 images per patch

    # One cache, every document led by its codec's tag, the modalities interleaved.
    cache = next((tmp_path / "cache").glob("mixed-*"))
    tags = [tag for _, tag in ByteDataset.open(cache)]
    assert tags[:6] == [0, 1, 2, 0, 1, 2] and sorted(set(tags)) == [0, 1, 2]

    step = out / "samples" / "step_000002"
    assert (step / "text_00.txt").is_file()
    info = soundfile.info(step / "audio_00.wav")
    assert info.samplerate == 4000 and info.frames <= round(0.01 * 4000)
    with Image.open(step / "image_00.png") as picture:
        assert picture.size == (8, 8) and picture.mode == "L"
    assert (step / "images.png").is_file()
    metadata = json.loads((out / "checkpoints" / "step_000002" / "metadata.json").read_text())
    assert set(metadata["codecs"]) == {"text", "audio", "image"} and metadata["layout"] == "records"
    assert metadata["codecs"]["audio"]["sample_rate"] == 4000

    mixed.main(["--resume", "--out", str(out), "--max-steps", "3", "--no-progress"])
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000003"
    assert (out / "samples" / "step_000003" / "image_00.png").is_file()


class RecordingModel:
    """Stands in for a model: remembers the header each generation starts from and returns fixed bytes."""

    def __init__(self) -> None:
        self.headers: list[list[int]] = []

    def generate(self, prompts, max_new_bytes, *, prefix_ids, **options):
        self.headers.append(list(prefix_ids))
        return [bytes(range(65, 65 + min(max_new_bytes, 26)))] * len(prompts)


def test_sampling_starts_each_modality_from_its_tag(tmp_path):
    codecs = {"text": bytecodecs.get_codec("text"), "audio": bytecodecs.get_codec("wav"),
              "image": bytecodecs.get_codec("image", width=4, height=4, mode="L")}
    model = RecordingModel()
    write = mixed.sample_writer(codecs, 4, count=2, text_bytes=10, audio_seconds=0.01, temperature=1.0, seed=0)
    write(model, 7, tmp_path)
    tags = [header[1] - tokens.FIRST_TAG_ID for header in model.headers]
    assert tags == [0, 1, 2] and all(header[0] == tokens.BOS_ID and len(header) == 4 for header in model.headers)
    folder = tmp_path / "step_000007"
    assert (folder / "text_01.txt").read_text() == "ABCDEFGHIJ"
    assert soundfile.info(folder / "audio_00.wav").samplerate == 8000
    with Image.open(folder / "image_01.png") as picture:
        assert picture.size == (4, 4)


def test_patch_follows_image_rows_and_audio_frames():
    codecs = {"audio": bytecodecs.get_codec("wav", sample_format="pcm16"),
              "image": bytecodecs.get_codec("image", width=7, height=7, mode="L")}
    assert mixed.aligned_patch_size(codecs, default=8) == 14  # a 7-byte row and 2-byte frames
    assert mixed.aligned_patch_size({"text": bytecodecs.get_codec("text")}, default=8) == 8
    with pytest.raises(RecipeError, match="--patch-sizes 7 would split 2-byte audio frames"):
        mixed.check_alignment(7, codecs)


def test_no_source_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="give at least one of --text, --audio and --images"):
        mixed.main(["--out", str(tmp_path / "run"), "--max-steps", "1"])
    with pytest.raises(SystemExit, match="--audio .*nowhere: no such file or folder"):
        mixed.main(["--audio", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), "--max-steps", "1"])


def test_training_flags_are_checked_before_the_documents_are_read(tmp_path):
    with pytest.raises(SystemExit, match=r"^python -m recipes.mixed: error: max_steps=-1 must be at least 1"):
        mixed.main(["--images", str(tmp_path / "nowhere.npz"), "--out", str(tmp_path / "run"), "--max-steps", "-1"])
