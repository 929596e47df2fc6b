"""The Hugging Face hub helpers (``bytemodels.hub``): a probe that decides within seconds, loading that fails
with one line, and a media column read as undecoded file bytes, row by row. No test touches the network."""

from __future__ import annotations

import argparse
import time

import pytest

from bytemodels import hub
from bytemodels.recipe import RecipeError


@pytest.fixture
def no_hub_settings(monkeypatch):
    """Neither offline mode nor a proxy nor an endpoint from the machine running the tests."""
    for variable in (*hub.OFFLINE_VARIABLES, "HF_ENDPOINT", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


@pytest.mark.parametrize("variable", hub.OFFLINE_VARIABLES)
def test_offline_mode_is_a_reason_without_a_connection(no_hub_settings, variable):
    no_hub_settings.setenv(variable, "1")
    assert hub.hub_unreachable_reason(timeout=0.01) == f"{variable} is set"


def test_behind_a_proxy_the_proxy_is_what_must_answer(no_hub_settings):
    no_hub_settings.setenv("HTTPS_PROXY", "127.0.0.1:9")  # the discard port: nothing listens there
    start = time.monotonic()
    reason = hub.hub_unreachable_reason(timeout=2)
    assert reason is not None and "127.0.0.1:9" in reason and time.monotonic() - start < 5


def test_loading_fails_fast_with_one_line_when_the_hub_is_unreachable(no_hub_settings):
    no_hub_settings.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError, match=r"^cannot download someone/speech from the Hugging Face hub "
                                           r"\(HF_HUB_OFFLINE is set\)$"):
        hub.load_hub_split("someone/speech", "train", None)
    assert issubclass(hub.HubError, RecipeError)  # a recipe prints it as one line


def test_hub_flags_default_to_the_train_split():
    parser = argparse.ArgumentParser()
    hub.add_hub_arguments(parser.add_argument_group("recipe"), "Image", "an image data set")
    args = parser.parse_args(["--hub-dataset", "ylecun/mnist"])
    assert (args.hub_dataset, args.hub_split, args.hub_config, args.hub_column) == ("ylecun/mnist", "train", None, None)
    assert set(hub.HUB_DATA_FLAGS.values()) == {"hub_dataset", "hub_split", "hub_config", "hub_column"}


# -- media columns ------------------------------------------------------------------------------------------------
@pytest.fixture
def media_table():
    """A hub-like table: a label column and an Image column of raw bytes (one row readable, one not, one more)."""
    datasets = pytest.importorskip("datasets")
    rows = [{"bytes": b"good 1", "path": None}, {"bytes": b"bad", "path": "broken.png"},
            {"bytes": b"good 2", "path": None}]
    storage = datasets.Features({"label": datasets.Value("int32"),
                                 "picture": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}})
    table = datasets.Dataset.from_dict({"label": [0, 1, 2], "picture": rows}, features=storage)
    return table.cast_column("picture", datasets.Image(decode=False))


class Unreadable(ValueError):
    """Stands in for a codec's error: ``reason`` is what the skip report shows."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"row: {reason}")
        self.reason = reason


def encode(value: dict) -> bytes:
    if not value["bytes"].startswith(b"good"):
        raise Unreadable("is not a readable image")
    return value["bytes"].upper()


def test_the_media_column_is_found_by_its_feature_type(media_table):
    assert hub.media_column(media_table, None, "Image", "x") == "picture"
    assert hub.media_column(media_table, "label", "Image", "x") == "label"
    with pytest.raises(RecipeError, match="--hub-column nothing: x has no such column"):
        hub.media_column(media_table, "nothing", "Image", "x")
    with pytest.raises(RecipeError, match="x has no Audio column .*--hub-column"):
        hub.media_column(media_table, None, "Audio", "x")


def test_media_documents_encode_undecoded_rows_and_skip_unusable_ones(media_table, monkeypatch, capsys):
    loaded = []
    monkeypatch.setattr(hub, "load_hub_split", lambda name, split, config: loaded.append(name) or media_table)
    key, read = hub.media_documents("someone/pictures", "test", None, None, "Image", encode, limit=None,
                                    skip=(Unreadable,), unit="image")
    assert key == {"hub": "someone/pictures", "split": "test", "config": None, "column": None, "limit": None}
    assert not loaded  # the hub is only contacted when the reader runs (when a cache is built)
    assert list(read()) == [b"GOOD 1", b"GOOD 2"]
    assert "skipped 1 unusable images of someone/pictures (split test) (first: row 1: is not a readable image)" \
        in capsys.readouterr().err
    _, read_two = hub.media_documents("someone/pictures", "test", None, None, "Image", encode, limit=1,
                                      skip=(Unreadable,), unit="image")
    assert list(read_two()) == [b"GOOD 1"]


def test_an_unreachable_hub_ends_with_where_to_find_the_data_offline(monkeypatch):
    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda timeout=hub.PROBE_TIMEOUT_S: "no network")
    _, read = hub.media_documents("someone/pictures", "train", None, None, "Image", encode, limit=None,
                                  skip=(Unreadable,), unit="image", offline_hint="pass --data DIR")
    with pytest.raises(hub.HubError, match=r"^cannot download someone/pictures from the Hugging Face hub "
                                           r"\(no network\); pass --data DIR$"):
        next(read())
