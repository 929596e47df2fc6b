"""``python -m recipes.images``: smoke runs (train, PNG samples of the configured size, a grid of completions,
the PNG table, resume), patches aligned to rows, hub rows read from raw bytes, and the fast offline failure."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # recipes/ runs from the checkout; it is never installed into site-packages
    sys.path.insert(0, str(REPO))

import bytecodecs  # noqa: E402
from bytemodels.app import hub  # noqa: E402
from recipes import images  # noqa: E402

# A model small enough that a few steps take a second or two on two CPU cores.
TINY_FLAGS = ["--dims", "32,16", "--layers", "1,1", "--heads", "2,1", "--batch-size", "2", "--warmup-steps", "1",
              "--no-progress"]


def blobs(count: int, size: int = 8, channels: int = 0, seed: int = 0) -> np.ndarray:
    """``count`` uint8 images of a bright square on a dark background: (count, size, size[, channels])."""
    rng = np.random.default_rng(seed)
    shape = (count, size, size) + ((channels,) if channels else ())
    array = rng.integers(0, 40, shape, dtype=np.uint8)
    for image in array:
        top, left = rng.integers(0, size // 2, 2)
        image[top:top + size // 2, left:left + size // 2] = 220
    return array


def run_recipe(*flags: str) -> None:
    images.main([*flags])


def test_array_run_writes_pngs_of_the_array_size_and_a_grid_then_resumes(tmp_path, capsys):
    np.savez_compressed(tmp_path / "digits.npz", images=blobs(24), labels=np.zeros(24, np.uint8))
    out = tmp_path / "run"
    run_recipe("--data", str(tmp_path / "digits.npz"), "--out", str(out), "--val-fraction", "0.25",
               "--max-steps", "2", "--num-samples", "3", *TINY_FLAGS)
    printed = capsys.readouterr().out
    assert "patch 8 bytes (1 image row), window 80 ids" in printed and "PNG" in printed

    step = out / "samples" / "step_000002"
    for name in ("sample_00.png", "completion_02.png"):
        with Image.open(step / name) as picture:
            assert picture.size == (8, 8) and picture.mode == "L"
    with Image.open(step / "grid.png") as grid:  # three rows: samples, held-out images, completions
        assert grid.height > 3 * 8 and grid.width > 3 * 8

    report = json.loads((out / "compression.json").read_text())
    assert report["images"] == 6 and report["pixel_bytes"] == 6 * 64
    assert report["png_idat_bits_per_byte"] < report["png_file_bits_per_byte"]
    assert np.isfinite(report["model_bits_per_byte"])
    config = json.loads((out / "checkpoints" / "step_000002" / "config.json").read_text())
    assert config["patch_sizes"] == [8] and config["max_seq_len"] == 80  # header + 64 pixels + EOS, 10 patches

    run_recipe("--resume", "--out", str(out), "--max-steps", "3", "--num-samples", "1", "--no-progress")
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000003"
    assert (out / "samples" / "step_000003" / "grid.png").is_file()


def test_folder_of_images_is_fitted_to_the_configured_size(tmp_path):
    folder = tmp_path / "pictures"
    for index, array in enumerate(blobs(6, size=12, channels=3)):
        path = folder / ("nested" if index % 2 else "") / f"picture_{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
    (folder / "broken.png").write_bytes(b"not a png")  # skipped and counted, not fatal
    out = tmp_path / "run"
    # 6x4 RGB: a row is 18 bytes; a patch of 6 bytes (two pixels) divides it.
    run_recipe("--data", str(folder), "--out", str(out), "--width", "6", "--height", "4", "--mode", "RGB",
               "--patch-sizes", "6", "--val-fraction", "0.4", "--max-steps", "1", "--num-samples", "1", *TINY_FLAGS)
    with Image.open(out / "samples" / "step_000001" / "sample_00.png") as picture:
        assert picture.size == (6, 4) and picture.mode == "RGB"
    config = json.loads((out / "checkpoints" / "step_000001" / "config.json").read_text())
    assert config["patch_sizes"] == [6] and config["max_seq_len"] == 6 + 13 * 6  # header + 72 pixels + EOS


def test_patches_must_line_up_with_rows(tmp_path):
    np.save(tmp_path / "images.npy", blobs(4))
    with pytest.raises(SystemExit, match="--patch-sizes 5 does not line up with image rows of 8 bytes"):
        run_recipe("--data", str(tmp_path / "images.npy"), "--out", str(tmp_path / "run"), "--patch-sizes", "5",
                   "--max-steps", "1")
    with pytest.raises(SystemExit, match="--fit keep"):
        run_recipe("--data", str(tmp_path / "images.npy"), "--out", str(tmp_path / "run"), "--fit", "keep",
                   "--max-steps", "1")


def test_bad_arrays_are_one_clear_error(tmp_path):
    np.savez(tmp_path / "floats.npz", images=np.zeros((3, 4, 4), np.float32))
    with pytest.raises(SystemExit, match="expected uint8 images"):
        run_recipe("--data", str(tmp_path / "floats.npz"), "--out", str(tmp_path / "run"), "--max-steps", "1")
    np.savez(tmp_path / "labels.npz", labels=np.zeros(3, np.uint8))
    with pytest.raises(SystemExit, match="no image array; it holds labels"):
        run_recipe("--data", str(tmp_path / "labels.npz"), "--out", str(tmp_path / "run"), "--max-steps", "1")


def test_training_flags_are_checked_before_the_images_are_read(tmp_path):
    with pytest.raises(SystemExit, match=r"^python -m recipes.images: error: batch_size=0 must be at least 1$"):
        run_recipe("--data", str(tmp_path / "nowhere.npz"), "--out", str(tmp_path / "run"), "--batch-size", "0")


def test_shared_arrays_give_row_patches_and_png_figures(shared_data, tmp_path):
    parser = images.build_parser()
    for name, size, mode, patch, window in (("mnist_test.npz", 28, "L", 28, 840),
                                            ("cifar10_test_sample5000.npz", 32, "RGB", 96, 3264)):
        args = parser.parse_args(["--data", str(shared_data / "images" / name), "--limit", "20"])
        codec, key, read = images.image_source(args, {})
        assert (codec.width, codec.height, codec.mode) == (size, size, mode)
        config = images.image_model_config(args, codec, images.DEVICE_DEFAULTS["cpu"])
        assert config.patch_size == patch and config.max_seq_len == window
        report = images.compression_report(None, list(read()), codec)
        assert report["images"] == 20 and 0.5 < report["png_idat_bits_per_byte"] < 8.0


def test_png_size_counts_whole_files_and_pixel_data():
    codec = bytecodecs.get_codec("image", width=8, height=8, mode="L")
    data = codec.encode_array(blobs(1)[0])
    png = images.png_bytes(data, codec)
    with Image.open(io.BytesIO(png)) as picture:
        assert np.array_equal(np.asarray(picture), blobs(1)[0])  # lossless
    sizes = images.png_size([data], codec)
    assert sizes == {"pixel_bytes": 64, "png_file_bytes": len(png), "png_idat_bytes": images.png_idat_size(png)}
    assert 0 < sizes["png_idat_bytes"] < len(png)


# -- the Hugging Face hub ------------------------------------------------------------------------------------
def test_hub_offline_mode_fails_fast_naming_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(SystemExit) as failure:
        run_recipe("--hub-dataset", "ylecun/mnist", "--out", str(tmp_path / "run"), "--max-steps", "1")
    message = str(failure.value)
    assert "cannot download ylecun/mnist from the Hugging Face hub (HF_HUB_OFFLINE is set)" in message
    assert "pass --data" in message and "\n" not in message
    assert time.monotonic() - start < 10


def test_unreachable_hub_fails_fast_without_network(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda timeout=3.0: "cannot connect to huggingface.co:443")
    with pytest.raises(SystemExit, match="cannot download uoft-cs/cifar10 .*cannot connect.*pass --data"):
        run_recipe("--hub-dataset", "uoft-cs/cifar10", "--out", str(tmp_path / "run"), "--max-steps", "1")


def test_hub_rows_are_decoded_from_raw_image_bytes(monkeypatch):
    datasets = pytest.importorskip("datasets")
    buffer = io.BytesIO()
    Image.fromarray(blobs(1, size=10)[0]).save(buffer, format="PNG")
    rows = [{"bytes": buffer.getvalue(), "path": None}, {"bytes": b"not an image", "path": None}]
    storage = datasets.Features({"img": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                                 "label": datasets.Value("int32")})
    table = datasets.Dataset.from_dict({"img": rows, "label": [0, 1]}, features=storage)
    table = table.cast_column("img", datasets.Image(decode=False))
    monkeypatch.setattr(hub, "load_hub_split", lambda name, split, config: table)
    codec = bytecodecs.get_codec("image", width=10, height=10, mode="L")
    _, read = images.hub_images("uoft-cs/cifar10", "train", None, None, codec, limit=None)
    assert list(read()) == [codec.encode_array(blobs(1, size=10)[0])]  # the unreadable row is skipped
