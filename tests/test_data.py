"""The data layer: the on-disk cache, the two layouts, splits and deterministic sharded batches."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bytemodels import tokens
from bytemodels.data import (DATA_FILE, MANIFEST_FILE, ByteDataset, DataCacheError, EmptyDataError, PackedWindows,
                             RecordWindows, record_prompt, split_documents)

PAD, BOS, EOS = tokens.PAD_ID, tokens.BOS_ID, tokens.EOS_ID


def random_documents(count: int, seed: int = 0, max_len: int = 40, tagged: bool = True) -> list:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(count):
        data = rng.integers(0, 256, int(rng.integers(0, max_len))).astype(np.uint8).tobytes()
        tag = int(rng.integers(0, 3)) if tagged and rng.random() < 0.5 else None
        docs.append((data, tag))
    return docs


def packed_reference(documents) -> list[int]:
    stream = []
    for data, tag in documents:
        stream += [BOS] + ([tokens.tag_id(tag)] if tag is not None else []) + list(data) + [EOS]
    return stream


def record_reference(documents, seq_len: int, patch: int) -> list[list[int]]:
    windows = []
    for data, tag in documents:
        record = record_prompt(patch, tag) + list(data) + [EOS]
        record += [PAD] * (-len(record) % patch)
        for start in range(0, len(record), seq_len):
            windows.append((record[start:start + seq_len] + [PAD] * seq_len)[:seq_len])
    return windows


def never_iterated():
    raise AssertionError("the documents were read although the cache exists")
    yield  # pragma: no cover


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(0, 30), min_size=1, max_size=12), seed=st.integers(0, 1000),
       seq_len=st.sampled_from([4, 8, 16, 32]))
def test_packed_windows_equal_the_joined_stream_at_every_start(lengths, seed, seq_len):
    rng = np.random.default_rng(seed)
    docs = [(rng.integers(0, 256, n).astype(np.uint8).tobytes(), None if rng.random() < 0.5 else int(rng.integers(13)))
            for n in lengths]
    with tempfile.TemporaryDirectory() as folder:
        dataset = ByteDataset.build(docs, folder, key={"seed": seed}, progress=False)
        windows = dataset.windows(seq_len, 4)
        stream = packed_reference(docs)
        assert isinstance(windows, PackedWindows) and windows.total == len(stream)
        for start in range(len(stream) + 2):
            expected = (stream[start:start + seq_len] + [PAD] * seq_len)[:seq_len]
            assert windows.window_at(start).tolist() == expected
        assert len(windows) == -(-len(stream) // seq_len)


def test_packed_windows_over_many_short_documents_of_a_split(tmp_path):
    # Windows spanning dozens of documents take the vectorised path; a split's documents are not
    # contiguous on disk.
    docs = random_documents(400, seed=5, max_len=4)
    dataset = ByteDataset.build(docs, tmp_path, key={"short": 1}, val_fraction=0.3, progress=False)
    for view in (dataset.train, dataset.val):
        stream = packed_reference(list(view))
        windows = view.windows(128, 8)
        for start in range(0, len(stream), 7):
            assert windows.window_at(start).tolist() == (stream[start:start + 128] + [PAD] * 128)[:128]


@pytest.mark.parametrize("seq_len, patch", [(16, 4), (8, 8), (32, 8), (12, 2)])
def test_record_windows_start_on_patch_boundaries_and_split_long_records(tmp_path, seq_len, patch):
    docs = random_documents(30, seed=seq_len + patch, max_len=50)
    dataset = ByteDataset.build(docs, tmp_path, key={"r": 1}, layout="records", progress=False)
    windows = dataset.windows(seq_len, patch)
    assert isinstance(windows, RecordWindows)
    expected = record_reference(docs, seq_len, patch)
    assert [windows.window(i).tolist() for i in range(len(windows))] == expected
    # No record is truncated: every byte of every record appears in its windows.
    assert sum(int((w < 256).sum()) for w in map(np.array, expected)) == sum(len(d) for d, _ in docs)


def test_record_prompt_is_one_patch_with_bos_and_tag():
    assert record_prompt(4, 2) == [BOS, tokens.tag_id(2), PAD, PAD]
    assert record_prompt(8) == [BOS, PAD] + [PAD] * 6
    with pytest.raises(ValueError, match="patch_size"):
        record_prompt(1)


def test_cache_costs_one_byte_per_byte_and_round_trips(tmp_path):
    docs = random_documents(50, seed=1, max_len=200)
    dataset = ByteDataset.build(docs, tmp_path, key={"a": 1}, progress=False)
    total = sum(len(d) for d, _ in docs)
    assert (dataset.path / DATA_FILE).stat().st_size == total == dataset.num_bytes
    assert list(dataset) == docs
    arrays = [np.frombuffer(d, dtype=np.uint8) for d, _ in docs[:5]]  # numpy uint8 documents work too
    from_arrays = ByteDataset.build(arrays, tmp_path, key={"np": 1}, progress=False)
    assert [d for d, _ in from_arrays] == [d for d, _ in docs[:5]]


def test_cache_is_reused_for_the_same_key_and_rebuilt_for_a_new_one(tmp_path):
    docs = random_documents(10)
    first = ByteDataset.build(docs, tmp_path, key={"source": "x", "codec": {"rate": 8000}}, progress=False)
    again = ByteDataset.build(never_iterated(), tmp_path, key={"codec": {"rate": 8000}, "source": "x"}, progress=False)
    assert again.path == first.path
    changed = ByteDataset.build(docs[:3], tmp_path, key={"source": "x", "codec": {"rate": 16000}}, progress=False)
    assert changed.path != first.path and len(changed) == 3
    relaid = ByteDataset.build(docs, tmp_path, key={"source": "x", "codec": {"rate": 8000}}, layout="records",
                               progress=False)
    assert relaid.path != first.path and relaid.layout == "records"


def test_an_interrupted_build_leaves_no_cache_and_the_next_build_completes(tmp_path):
    def failing():
        yield b"abc"
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError, match="source went away"):
        ByteDataset.build(failing(), tmp_path, key={"k": 1}, progress=False)
    assert list(tmp_path.iterdir()) == []
    # A build killed outright leaves a temporary folder behind; it never looks complete.
    stale = tmp_path / ".dataset-0123.building-x"
    stale.mkdir()
    (stale / DATA_FILE).write_bytes(b"abc")
    with pytest.raises(DataCacheError, match="incomplete"):
        ByteDataset.open(stale)
    dataset = ByteDataset.build([b"abc", b"de"], tmp_path, key={"k": 1}, progress=False)
    assert len(dataset) == 2 and (dataset.path / MANIFEST_FILE).is_file()


def test_a_truncated_cache_gives_a_clear_error(tmp_path):
    dataset = ByteDataset.build(random_documents(20, max_len=100), tmp_path, key={"k": 2}, progress=False)
    data_file = dataset.path / DATA_FILE
    data_file.write_bytes(data_file.read_bytes()[:-5])
    with pytest.raises(DataCacheError, match=r"data\.bin.*build again"):
        ByteDataset.open(dataset.path)


@pytest.mark.parametrize("bad, message", [(["text"], "must be bytes"), ([(b"x", -1)], "tag"), ([], "no documents"),
                                          ([(b"x", 1, 2)], "tuple")])
def test_bad_documents_are_refused_with_a_clear_message(tmp_path, bad, message):
    with pytest.raises((TypeError, ValueError), match=message):
        ByteDataset.build(bad, tmp_path, key={"bad": str(bad)}, progress=False)
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def test_no_documents_is_its_own_error(tmp_path):
    # Recipes report it in one line: a source whose every file was skipped (unreadable) builds nothing.
    with pytest.raises(EmptyDataError, match="no documents to build dataset 'clips'"):
        ByteDataset.build(iter([]), tmp_path, key={"empty": 1}, name="clips", progress=False)
    assert issubclass(EmptyDataError, ValueError)


def test_key_must_be_json(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        ByteDataset.build([b"x"], tmp_path, key={"path": Path("x")}, progress=False)


def test_a_tag_outside_the_model_vocabulary_is_refused(tmp_path):
    dataset = ByteDataset.build([(b"abc", 5)], tmp_path, key={"t": 5}, progress=False)
    with pytest.raises(ValueError, match="num_tags"):
        dataset.windows(8, 4, num_tags=3)


def test_a_bool_tag_and_a_whole_validation_split_are_refused_at_once(tmp_path):
    with pytest.raises(ValueError, match="document 0 has tag True"):  # it was stored as tag 1
        ByteDataset.build([(b"abc", True)], tmp_path, key={"t": "bool"}, progress=False)
    never_read = iter(())  # the documents are not read before the split is checked
    with pytest.raises(ValueError, match=r"val_fraction=1.0 must be in \[0, 1\)"):
        ByteDataset.build(never_read, tmp_path, key={"t": "split"}, val_fraction=1.0, progress=False)
    built = ByteDataset.build([(b"abc", None)], tmp_path, key={"t": "ok"}, progress=False)
    with pytest.raises(ValueError, match="val_fraction=1.0"):  # it used to fail only at .train or .val
        ByteDataset.open(built.path, val_fraction=1.0)


def test_train_and_validation_are_disjoint_documents(tmp_path):
    docs = [(f"document {i:03d}".encode(), None) for i in range(101)]
    dataset = ByteDataset.build(docs, tmp_path, key={"s": 1}, val_fraction=0.1, split_seed=3, progress=False)
    train, val = dataset.train, dataset.val
    assert len(val) == 10 and len(train) == 91
    assert set(train.doc_ids).isdisjoint(val.doc_ids)
    assert {d for d, _ in train} | {d for d, _ in val} == {d for d, _ in docs}
    # Whole documents inside validation windows (between BOS and EOS) are validation documents.
    val_docs = {d for d, _ in val}
    seen = set()
    for window in val.windows(64, 8).fixed(100).tolist():
        bos = [i for i, t in enumerate(window) if t == BOS]
        for start in bos:
            end = window.index(EOS, start) if EOS in window[start:] else None
            if end is not None:
                seen.add(bytes(window[start + 1:end]))
    assert seen and seen <= val_docs
    # The split is fixed by the seed.
    reopened = ByteDataset.open(dataset.path, val_fraction=0.1, split_seed=3)
    assert np.array_equal(reopened.val.doc_ids, val.doc_ids)


def test_split_sizes():
    train, val = split_documents(10, 0.01, seed=0)
    assert len(val) == 1 and len(train) == 9  # a positive fraction always yields a validation document
    train, val = split_documents(10, 0.0, seed=0)
    assert len(val) == 0 and len(train) == 10
    with pytest.raises(ValueError, match="val_fraction"):
        split_documents(10, 1.0, seed=0)


@pytest.mark.parametrize("layout", ["packed", "records"])
def test_batches_are_a_function_of_seed_and_step_and_shard_across_ranks(tmp_path, layout):
    dataset = ByteDataset.build(random_documents(60, max_len=80), tmp_path, key={"b": 1}, layout=layout,
                                progress=False)
    windows = dataset.windows(32, 8)
    batch = windows.batch(seed=7, step=11, batch_size=6)
    assert batch.shape == (6, 32) and batch.dtype == np.int64
    assert np.array_equal(batch, windows.batch(seed=7, step=11, batch_size=6))
    assert not np.array_equal(batch, windows.batch(seed=7, step=12, batch_size=6))
    assert not np.array_equal(batch, windows.batch(seed=8, step=11, batch_size=6))
    shards = [windows.batch(seed=7, step=11, batch_size=2, rank=r, world_size=3) for r in range(3)]
    assert np.array_equal(np.concatenate(shards), batch)
    assert np.array_equal(windows.fixed(5), windows.fixed(5))


def test_packed_validation_windows_spread_over_the_stream_records_lead(tmp_path):
    # Sorted held-out data: a leading sample would see only the first documents.
    docs = [(bytes([65 + i // 10]) * 40, None) for i in range(100)]
    packed = ByteDataset.build(docs, tmp_path / "p", key={"w": 1}, layout="packed", progress=False).windows(32, 8)
    total = len(packed)
    chosen = packed.fixed(4)
    assert chosen.shape == (4, 32)
    assert list(packed.fixed_indices(4)) == [0, total // 4, total // 2, 3 * total // 4]
    for row, index in zip(chosen, packed.fixed_indices(4)):
        assert np.array_equal(row, packed.window(index))
    assert ord("H") in chosen[-1]  # documents from the last third of the stream are scored, not only "A"s
    assert np.array_equal(packed.fixed(total + 5), np.stack([packed.window(i) for i in range(total)]))
    records = ByteDataset.build(docs, tmp_path / "r", key={"w": 1}, layout="records", progress=False).windows(32, 8)
    assert np.array_equal(records.fixed(3), np.stack([records.window(i) for i in range(3)]))
    assert packed.fixed(0).shape == (0, 32)


def test_empty_split_has_no_windows(tmp_path):
    dataset = ByteDataset.build([b"abc", b"def"], tmp_path, key={"e": 1}, progress=False)
    assert len(dataset.val) == 0
    with pytest.raises(ValueError, match="no documents"):
        dataset.val.windows(8, 4)


def test_real_text_round_trips(tmp_path, shared_data):
    path = shared_data / "tinystories" / "valid.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    stories = [s.encode() for s in path.read_text(encoding="utf-8").split("\n<|endoftext|>\n")[:-1]][:200]
    dataset = ByteDataset.build(stories, tmp_path, key={"file": str(path), "n": 200}, val_fraction=0.05,
                                progress=False)
    assert [d for d, _ in dataset] == stories
    joined = b"\x00".join(d for d, _ in dataset.train)
    for window in dataset.train.windows(256, 8).batch(0, 0, 4).tolist():
        pieces, piece = [], []
        for token in window + [EOS]:
            if token < 256:
                piece.append(token)
            elif piece:
                pieces.append(bytes(piece))
                piece = []
        assert pieces and all(p in joined for p in pieces)
