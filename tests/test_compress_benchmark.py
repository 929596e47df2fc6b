"""benchmarks/compress.py end to end on tiny models and generated data: the held-out files the recipes would pick,
every size checked by a round trip, and a table whose numbers follow from the files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import compress as bench
from test_compress_codecs import IMAGE, TEXT, WAV, model_folder, write_clip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    data = root / "data"
    (data / "tinystories").mkdir(parents=True)
    stories = [TEXT[i:i + 200] for i in range(0, 1200, 200)]
    (data / "tinystories" / "valid.txt").write_bytes(b"\n<|endoftext|>\n".join(stories) + b"\n<|endoftext|>\n")
    clips = root / "clips"
    clips.mkdir()
    for index in range(4):
        write_clip(clips / f"{index}.wav", seconds=0.01 * (index + 1))
    np.savez(root / "digits.npz", images=np.random.default_rng(0).integers(0, 256, (6, 4, 4), dtype=np.uint8))
    text, audio, images = root / "text", root / "audio", root / "images"
    model_folder(text, {"name": "text"}, "packed", train_on=TEXT)
    model_folder(audio, WAV, "records")
    model_folder(images, IMAGE, "records")
    for folder, source in ((audio, clips), (images, root / "digits.npz")):
        metadata = json.loads((folder / "metadata.json").read_text())
        metadata["data"] = {"path": str(source), "val_fraction": 0.5}
        (folder / "metadata.json").write_text(json.dumps(metadata))
    return root, data, text, audio, images


def test_the_benchmark_measures_every_data_set(setup, capsys):
    root, data, text, audio, images = setup
    out = root / "out"
    assert bench.main(["--data", str(data), "--text-model", str(text), "--audio-model", str(audio),
                       "--image-model", str(images), "--threads", "1", "--batch-size", "4",
                       "--speed-batch-sizes", "2", "--speed-bytes", "3000", "--out", str(out)]) == 0
    results = json.loads(next(out.glob("compress-*.json")).read_text())
    sizes = results["sizes"]
    assert sizes["text"]["bytes"] == len((data / "tinystories" / "valid.txt").read_bytes())
    assert sizes["audio"]["files"] == 2 and sizes["audio"]["through_codec"] == 2  # half of 4 clips held out
    assert sizes["images"]["bytes"] == 3 * 16  # half of 6 images, 16 bytes each, in one raw file
    for name in ("text", "audio", "images"):
        assert sizes[name]["verified"] >= 1
        assert sizes[name]["bmz_bits_per_byte"] == pytest.approx(8 * sizes[name]["bmz"] / sizes[name]["bytes"])
        assert "xz -9e" in sizes[name]["compressors"]
    assert results["speed"][0]["batch_size"] == 2 and results["speed"][0]["decompress_kb_s"] > 0
    table = capsys.readouterr().out
    assert f"**{sizes['text']['bmz_bits_per_byte']:.3f}**" in table and "FLAC" in table


def test_held_out_files_follow_the_recipes_split(setup):
    root, _, _, audio, _ = setup
    model = bench.Model(str(audio), 4)
    held_out = bench.held_out_clips(model.metadata, model.codec)
    assert len(held_out) == 2 and all(path.suffix == ".wav" for path in held_out)
