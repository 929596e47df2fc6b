"""The Hugging Face hub helpers (``bytemodels.app.hub``): a probe that decides within seconds, loading that fails
with one line, and a media column read as undecoded file bytes, row by row. No test touches the network."""

from __future__ import annotations

import argparse
import socket
import threading
import time

import pytest

from bytemodels.app import hub
from bytemodels.app.recipe import RecipeError


PROXY_VARIABLES = tuple(f"{scheme}_{case}" for scheme in ("https", "http", "all", "no")
                        for case in ("proxy", "PROXY"))


@pytest.fixture
def no_hub_settings(monkeypatch):
    """Neither offline mode nor a proxy nor an endpoint from the machine running the tests."""
    for variable in (*hub.OFFLINE_VARIABLES, "HF_ENDPOINT", *PROXY_VARIABLES):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


@pytest.fixture
def local_server():
    """Starts a server on 127.0.0.1 that accepts connections and sends ``reply`` to each request, or never
    answers when ``reply`` is None (a stuck proxy or hub); returns its port. Stopped when the test ends."""
    servers = []

    def start(reply: bytes | None) -> int:
        listener = socket.create_server(("127.0.0.1", 0))

        def serve() -> None:
            held = []  # a silent server keeps its connections open, as a stuck proxy does
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:  # the listener was shut down: the test is over
                    break
                held.append(connection)
                if reply is not None:
                    request = b""
                    while b"\r\n\r\n" not in request and (chunk := connection.recv(4096)):
                        request += chunk
                    connection.sendall(reply)
                    connection.close()
            for connection in held:
                connection.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        servers.append((listener, thread))
        return listener.getsockname()[1]

    yield start
    for listener, thread in servers:
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not on Linux)
        except OSError:  # some systems refuse to shut down a listening socket; the thread is a daemon
            pass
        listener.close()
        thread.join(timeout=2)


def refuse_connections(address, timeout=None):
    raise OSError(101, "Network is unreachable")


# (variables set, whether connecting is refused, the reason expected): every way the probe decides without an answer.
PROBE_CASES = [
    *[({variable: "1"}, True, f"{variable} is set") for variable in hub.OFFLINE_VARIABLES],  # before any connection
    ({}, True, "cannot connect to huggingface.co:443 (Network is unreachable)"),
    ({"HF_ENDPOINT": "http://127.0.0.1:9"}, False, "cannot connect to 127.0.0.1:9 ("),  # the discard port: nothing
    ({"HTTPS_PROXY": "127.0.0.1:9"}, False, "cannot connect to 127.0.0.1:9 ("),  # listens; behind a proxy, the proxy
]


@pytest.mark.parametrize("variables, refused, reason", PROBE_CASES,
                         ids=[" ".join(case[0]) or "no network" for case in PROBE_CASES])
def test_the_probe_gives_the_reason_within_seconds(no_hub_settings, variables, refused, reason):
    for variable, value in variables.items():
        no_hub_settings.setenv(variable, value)
    if refused:
        no_hub_settings.setattr(socket, "create_connection", refuse_connections)
    start = time.monotonic()
    assert hub.hub_unreachable_reason(timeout=2).startswith(reason)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(("variable", "named"), [("HTTPS_PROXY", "the proxy 127.0.0.1"),
                                                   ("HF_ENDPOINT", "127.0.0.1")])
def test_a_connection_that_is_never_answered_fails_within_seconds(no_hub_settings, local_server, variable, named):
    # A proxy (or hub) that accepts connections but never answers: datasets would hang for minutes in retries.
    port = local_server(None)
    no_hub_settings.setenv(variable, f"http://127.0.0.1:{port}")
    start = time.monotonic()
    reason = hub.hub_unreachable_reason(timeout=1)
    assert reason == f"{named}:{port} accepted a connection but did not answer within 1 s"
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("reply", [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                                   b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/\r\nContent-Length: 0\r\n\r\n"])
def test_any_http_answer_means_the_hub_is_there(no_hub_settings, local_server, reply):
    port = local_server(reply)
    no_hub_settings.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub.hub_unreachable_reason(timeout=2) is None  # not even a redirect to where nothing listens is followed
    # An http endpoint goes through the http proxy, which answers for the hub (hub.invalid is never looked up).
    no_hub_settings.setenv("HF_ENDPOINT", "http://hub.invalid")
    no_hub_settings.setenv("http_proxy", f"http://127.0.0.1:{port}")
    assert hub.hub_unreachable_reason(timeout=2) is None
    no_hub_settings.setenv("no_proxy", "hub.invalid")  # ... unless NO_PROXY names the host
    assert "cannot connect to hub.invalid:80" in hub.hub_unreachable_reason(timeout=2)


def test_a_proxy_that_refuses_the_tunnel_to_the_hub_is_a_reason(no_hub_settings, local_server):
    port = local_server(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    no_hub_settings.setenv("HTTPS_PROXY", f"127.0.0.1:{port}")
    assert hub.hub_unreachable_reason(timeout=2) == \
        f"request to the proxy 127.0.0.1:{port} failed (Tunnel connection failed: 403 Forbidden)"


def test_an_endpoint_that_is_no_url_is_a_reason(no_hub_settings):
    no_hub_settings.setenv("HF_ENDPOINT", "huggingface.co")
    assert hub.hub_unreachable_reason(timeout=0.01) == "HF_ENDPOINT 'huggingface.co' is not an http(s) URL"


def test_loading_fails_fast_with_one_line_when_the_hub_is_unreachable(no_hub_settings):
    no_hub_settings.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError, match=r"^cannot download someone/speech from the Hugging Face hub "
                                           r"\(HF_HUB_OFFLINE is set\)$"):
        hub.load_hub_split("someone/speech", "train", None)
    assert issubclass(hub.HubError, RecipeError)  # a recipe prints it as one line


def test_hub_flags_fill_the_attributes_the_recipes_read():
    parser = argparse.ArgumentParser()
    hub.add_hub_arguments(parser.add_argument_group("recipe"), "Image", "an image data set")
    args = parser.parse_args(["--hub-dataset", "a/b", "--hub-split", "test", "--hub-config", "c", "--hub-column", "d"])
    assert {key: getattr(args, name) for key, name in hub.HUB_DATA_FLAGS.items()} == {
        "hub": "a/b", "hub_split": "test", "hub_config": "c", "hub_column": "d"}
    # Left out, the split is the one the recipes' DataFlags fill in when comparing a resumed run's flags.
    assert parser.parse_args(["--hub-dataset", "a/b"]).hub_split == hub.DEFAULT_SPLIT


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
