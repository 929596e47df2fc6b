"""Training windows in shuffled epochs: every part of the data once per epoch, a pure function of seed and index."""

from __future__ import annotations

import numpy as np
import pytest

from bytemodels.data import ByteDataset
from bytemodels.window_order import epoch_choices, permute
from tests.test_data import random_documents


@pytest.mark.parametrize("size", [1, 2, 3, 5, 16, 17, 255, 1000, 4097])
def test_permute_is_one_to_one_on_its_range(size):
    keys = np.array([11, 22, 33, 44], dtype=np.uint64)
    order = permute(np.arange(size), size, keys)
    assert sorted(order.tolist()) == list(range(size))


def test_other_keys_give_another_order():
    first = permute(np.arange(1000), 1000, np.array([1, 2, 3, 4], dtype=np.uint64))
    second = permute(np.arange(1000), 1000, np.array([5, 6, 7, 8], dtype=np.uint64))
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, np.arange(1000))  # shuffled, not the identity


def test_an_epoch_is_a_shifted_grid_read_once_in_a_random_order():
    num_choices, stride = 10_000, 64
    per_epoch = num_choices // stride
    choices = epoch_choices(3, np.arange(3 * per_epoch), num_choices, stride)
    assert choices.min() >= 0 and choices.max() < num_choices
    epochs = choices.reshape(3, per_epoch)
    for epoch in epochs:
        assert len(set((epoch % stride).tolist())) == 1  # one grid: every window the same distance from a cut
        assert len(set((epoch // stride).tolist())) == per_epoch  # each of its windows once
    shifts = {int(epoch[0] % stride) for epoch in epochs}
    assert len(shifts) > 1  # the cuts move from one epoch to the next
    assert not np.array_equal(np.sort(epochs[0]) // stride, epochs[0] // stride)  # not read in order
    assert np.array_equal(epoch_choices(3, np.arange(7, 20), num_choices, stride), choices[7:20])
    assert not np.array_equal(epoch_choices(4, np.arange(per_epoch), num_choices, stride), epochs[0])


def test_fewer_choices_than_a_stride_and_a_set_of_windows():
    assert set(epoch_choices(0, np.arange(20), 5, 64).tolist()) <= set(range(5))
    order = epoch_choices(0, np.arange(14), 7, 1)
    assert sorted(order[:7].tolist()) == list(range(7)) and sorted(order[7:].tolist()) == list(range(7))


def test_memory_does_not_grow_with_the_data():
    # A trillion windows per epoch: computed per index, never as an array of the epoch.
    choices = epoch_choices(0, np.arange(10**12, 10**12 + 8), 10**15, 1024)
    assert len(set(choices.tolist())) == 8 and choices.max() < 10**15


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="num_choices=0"):
        epoch_choices(0, np.arange(3), 0, 8)
    with pytest.raises(ValueError, match="size=0"):
        permute(np.arange(1), 0, np.array([1], dtype=np.uint64))


def test_packed_training_reads_the_stream_once_per_epoch(tmp_path):
    dataset = ByteDataset.build(random_documents(200, max_len=80), tmp_path, key={"e": 1}, layout="packed",
                                progress=False)
    windows = dataset.windows(32, 8)
    per_epoch = windows.num_choices // windows.choice_stride
    starts = epoch_choices(5, np.arange(per_epoch), windows.num_choices, windows.choice_stride)
    steps = -(-per_epoch // 4)
    batches = np.concatenate([windows.batch(seed=5, step=step, batch_size=4) for step in range(steps)])[:per_epoch]
    assert np.array_equal(batches, np.stack([windows.window_at(int(start)) for start in starts]))
    covered = np.zeros(windows.total, dtype=int)
    for start in starts:
        covered[start:start + 32] += 1
    assert covered.max() == 1 and covered.sum() >= windows.total - 2 * 32  # all but the edges, once


def test_records_training_reads_every_window_once_per_epoch(tmp_path):
    dataset = ByteDataset.build(random_documents(30, max_len=80), tmp_path, key={"r": 1}, layout="records",
                                progress=False)
    windows = dataset.windows(32, 8)
    count = windows.num_choices
    assert count > 30  # some records span two windows
    read = np.concatenate([windows.batch(seed=1, step=step, batch_size=count) for step in range(2)])
    every = np.stack([windows.window(index) for index in range(count)])
    for epoch in (read[:count], read[count:]):
        assert sorted(map(bytes, epoch.astype(np.uint16))) == sorted(map(bytes, every.astype(np.uint16)))
    assert not np.array_equal(read[:count], every)  # in a shuffled order
