"""``bytecodecs.image.load_array``: images stored as numpy arrays (MNIST, CIFAR-10), with errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from bytecodecs import CodecError, get_codec
from bytecodecs.image import load_array


def test_npy_and_npz_arrays_load_with_the_images_array_found_by_name_or_shape(tmp_path):
    grey = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    np.save(tmp_path / "grey.npy", grey)
    assert np.array_equal(load_array(tmp_path / "grey.npy"), grey)
    colour = np.zeros((3, 2, 2, 3), np.uint8)
    np.savez(tmp_path / "named.npz", labels=np.zeros(3, np.uint8), images=colour)
    np.savez(tmp_path / "shaped.npz", labels=np.zeros(3, np.uint8), x=colour)
    assert load_array(tmp_path / "named.npz").shape == (3, 2, 2, 3)
    assert load_array(tmp_path / "shaped.npz").shape == (3, 2, 2, 3)  # the first array shaped like images
    assert load_array(str(tmp_path / "shaped.npz"), key="x").shape == (3, 2, 2, 3)
    codec = get_codec("image", width=4, height=4, mode="L")
    assert codec.encode_array(load_array(tmp_path / "grey.npy")[1]) == grey[1].tobytes()


def test_bad_arrays_raise_codec_errors_naming_the_file(tmp_path):
    (tmp_path / "text.npy").write_text("not numpy")
    np.savez(tmp_path / "labels.npz", labels=np.zeros(3, np.uint8))
    np.save(tmp_path / "floats.npy", np.zeros((2, 4, 4), np.float32))
    for name, message in (("text.npy", "not a readable numpy file"), ("labels.npz", "no image array; it holds labels"),
                          ("floats.npy", "expected uint8 images")):
        with pytest.raises(CodecError, match=message) as failure:
            load_array(tmp_path / name)
        assert failure.value.path == tmp_path / name and str(failure.value).startswith(str(tmp_path / name))
    with pytest.raises(CodecError, match="no image array 'x'; it holds labels"):
        load_array(tmp_path / "labels.npz", key="x")
