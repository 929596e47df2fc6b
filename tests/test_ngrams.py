"""Hashed byte n-gram embeddings: the rows the n-grams select, and a model with them through save, load,
compiled decoding and compression (generation equality is in test_generate.py, causality in test_model.py)."""

from __future__ import annotations

import torch

from bytemodels import Megabyte, MegabyteConfig, compress, decompress, tokens
from bytemodels.ngrams import hash_ngrams, is_word_byte, ngram_powers
from model_helpers import use_input_skip

SHAPE = dict(patch_sizes=(4,), dims=(32, 16), layers=(2, 1), heads=(2, 1), max_seq_len=64,
             hash_ngrams=(2, 3, 6), hash_word_bytes=5, hash_buckets=97)


def ngram_model() -> Megabyte:
    torch.manual_seed(0)
    return use_input_skip(Megabyte(MegabyteConfig.preset("tiny", **SHAPE)).eval())


def test_a_row_depends_on_the_n_ids_ending_at_its_position_and_no_others():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (3, 40), generator=generator)
    rows = hash_ngrams(ids, ngram_powers((2, 5)), 97)
    assert rows.shape == (3, 40, 2)
    assert (rows[..., 0] < 97).all() and (rows[..., 1] >= 97).all() and (rows[..., 1] < 2 * 97).all()
    # The same 5 ids before position 30 in another context: the same 5-gram row there, and the same 2-gram row.
    other = torch.randint(0, 256, (3, 40), generator=generator)
    other[:, 26:31] = ids[:, 26:31]
    assert torch.equal(hash_ngrams(other, ngram_powers((2, 5)), 97)[:, 30], rows[:, 30])
    # One id changed: the rows of the n-grams that hold it change (bar a collision), none before it.
    changed = ids.clone()
    changed[:, 20] = (changed[:, 20] + 1) % 256
    new = hash_ngrams(changed, ngram_powers((2, 5)), 97)
    assert torch.equal(new[:, :20], rows[:, :20]) and torch.equal(new[:, 25:, 1], rows[:, 25:, 1])
    assert (new[:, 20:22, 0] != rows[:, 20:22, 0]).float().mean() > 0.9
    # Before the sequence the ids are PAD: a short row hashes as a longer one with PAD in front of it.
    padded = torch.cat((torch.full((3, 4), tokens.PAD_ID), ids), dim=1)
    assert torch.equal(hash_ngrams(padded, ngram_powers((2, 5)), 97)[:, 4:], rows)


def word_rows(text: bytes, reach: int = 8) -> list[int]:
    """The word-so-far row at each byte of ``text`` (its n-gram columns are a 2-gram's)."""
    ids = torch.tensor([list(text)])
    return hash_ngrams(ids, ngram_powers((2,), reach), 97, words=True)[0, :, 1].tolist()


def test_the_word_row_names_the_word_so_far_whatever_came_before_it():
    text = b"the cat sat. a cat ran (cat"
    rows = word_rows(text)
    first, second, third = (text.index(b" cat"), text.index(b" cat", 5), text.index(b"(cat") - 1)
    # " c", " ca", " cat" and " cat " alike in both places, though the bytes before the space differ.
    assert rows[first + 1:first + 5] == rows[second + 1:second + 5]
    # After a bracket the word so far starts at the bracket: a different row (bar a collision) for the same letters.
    assert rows[third + 2:third + 5] != rows[first + 1:first + 4]
    # Inside a word every row differs from the one before: the word grows by a byte each time.
    assert all(a != b for a, b in zip(rows[first + 1:first + 4], rows[first + 2:first + 5]))
    # A word longer than the reach: the row depends on the newest ``reach`` bytes only.
    long_a, long_b = word_rows(b" abcdefghijklmnop", 6), word_rows(b" zzzzzzzzzzklmnop", 6)
    assert long_a[-1] == long_b[-1] and long_a[-7] != long_b[-7]
    # Without ``words`` the last column is a plain n-gram of the reach: different rows.
    plain = hash_ngrams(torch.tensor([list(text)]), ngram_powers((2,), 8), 97)[0, :, 1].tolist()
    assert plain[first + 4] != plain[second + 4]


def test_word_bytes_are_letters_digits_and_utf8_and_nothing_else():
    word = b"azAZ09" + "é日".encode()
    separators = b" .,;:!?'\"\n\t-_@[`{\x00\x7f"
    assert is_word_byte(torch.tensor(list(word))).all()
    assert not is_word_byte(torch.tensor(list(separators) + [tokens.PAD_ID, tokens.BOS_ID, tokens.EOS_ID])).any()


def test_the_tables_add_parameters_but_a_model_without_them_keeps_its_weights():
    plain = Megabyte(MegabyteConfig.preset("tiny", **{**SHAPE, "hash_ngrams": (), "hash_word_bytes": 0}))
    hashed = ngram_model()
    tables = [name for name in hashed.state_dict() if "ngrams" in name]
    assert tables == ["stages.0.embed.ngrams.weight", "stages.1.embed.ngrams.weight"]
    assert set(plain.state_dict()) == set(hashed.state_dict()) - set(tables)
    assert hashed.state_dict()[tables[0]].shape == (4 * 97, 16)  # 3 lengths and the word; the byte-embedding width


def test_save_and_load_keep_the_n_grams(tmp_path):
    model = ngram_model()
    model.save_pretrained(tmp_path / "model")
    loaded = Megabyte.from_pretrained(tmp_path / "model")
    assert loaded.config.hash_ngrams == (2, 3, 6) and loaded.config.hash_buckets == 97
    assert loaded.config.hash_word_bytes == 5
    ids = torch.randint(0, 256, (2, 30))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_compiled_decoding_matches_the_uncompiled():
    model = ngram_model()
    prompts = [b"a", b"The cat sat on", b"mat and the do"]
    eager = model.generate(prompts, 14, temperature=0)
    assert model.generate(prompts, 14, temperature=0, compile=True) == eager
    assert model.generate(prompts, 14, temperature=0, use_cache=False) == eager


def test_compression_round_trips_with_n_grams():
    model = ngram_model()
    data = b"".join(b"the dog %d sat on the log. " % (i % 5) for i in range(12))
    blob = compress(model, data, batch_size=2)
    assert decompress(model, blob) == data


def test_n_gram_dropout_leaves_rows_out_in_training_only():
    torch.manual_seed(0)
    dropped = use_input_skip(Megabyte(MegabyteConfig.preset("tiny", **SHAPE, ngram_dropout=0.5)))
    model = ngram_model()
    dropped.load_state_dict(model.state_dict())
    ids = torch.randint(0, 256, (2, 64))
    # Evaluation and generation see every row: the same output as a model trained without the dropout.
    torch.testing.assert_close(dropped.eval()(ids).logits, model(ids).logits, rtol=0, atol=0)
    dropped.train()
    torch.manual_seed(1)
    first = dropped(ids, ids).loss
    torch.manual_seed(1)
    again = dropped(ids, ids).loss  # the trainer reseeds every step, so a resumed run draws the same rows
    torch.manual_seed(2)
    other = dropped(ids, ids).loss
    assert first == again and first != other
    # About half of the rows a batch looks up get no gradient; a table row is a unit, never a part of one.
    first.backward()
    table = dropped.stages[1].embed.ngrams.weight
    used = hash_ngrams(ids, dropped.ngram_powers, 97, words=True).flatten().unique()
    reached = table.grad.abs().amax(dim=1).ne(0)
    assert 0 < reached[used].float().mean() < 1 and not reached[~torch.isin(torch.arange(table.shape[0]), used)].any()


def test_n_gram_dropout_per_table_leaves_each_table_out_at_its_own_rate():
    # SHAPE's four tables: the 2-, 3- and 6-grams, then the word so far.
    dropped = use_input_skip(Megabyte(MegabyteConfig.preset("tiny", **SHAPE, ngram_dropout=(0.0, 0.5, 0.0, 0.9))))
    embed = dropped.stages[1].embed
    found = torch.ones(64, 256, 1, 4, 3)  # (batch, time, unit, tables, width)
    torch.manual_seed(0)
    kept = embed.kept_rows(found)[..., 0]  # (batch, time, unit, tables)
    left_out = kept.eq(0).float().flatten(0, 2).mean(0)
    assert left_out[0] == 0 and left_out[2] == 0  # a rate of 0 keeps every row
    assert abs(left_out[1] - 0.5) < 0.02 and abs(left_out[3] - 0.9) < 0.02
    # The kept rows are scaled up by their own table's rate, so each table's expected share is unchanged.
    torch.testing.assert_close(kept.flatten(0, 2).amax(0), torch.tensor([1.0, 2.0, 1.0, 10.0]))
    torch.testing.assert_close(kept.flatten(0, 2).mean(0), torch.ones(4), atol=0.2, rtol=0)


def test_one_n_gram_dropout_rate_is_every_tables_rate():
    one = MegabyteConfig.preset("tiny", **SHAPE, ngram_dropout=0.25)
    assert one.ngram_dropout == (0.25,)
    assert MegabyteConfig.preset("tiny", **SHAPE, ngram_dropout=(0.25,) * 4).ngram_dropout == (0.25,) * 4
    saved = one.to_dict()
    assert MegabyteConfig.from_dict({**saved, "ngram_dropout": 0.25}) == one  # as configs saved a number before
