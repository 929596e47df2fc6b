"""Hugging Face data sets for recipes: fail within seconds when the hub cannot be reached, and read a media
column (audio, images) as the undecoded file bytes of each row.

``datasets`` retries for minutes without a network, so ``load_hub_split`` first sends the hub one small request
(through the proxy in front of it, if any) and raises ``HubError`` with the reason when no answer comes within
seconds; a recipe adds where to find the data offline.
Media columns are read with ``decode=False``: ``datasets``' own decoders need extra system libraries, while
a recipe's codec reads the file bytes itself. Nothing here knows a modality beyond the name of a
``datasets`` feature type (``"Audio"``, ``"Image"``).
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import ParseResult, urlparse

from bytemodels.app.recipe import RecipeError

PROBE_TIMEOUT_S = 3.0
"""How long the reachability probe waits for the hub (or the proxy) to accept a connection, and then to answer."""
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
"""Environment variables that switch the hub off when set to 1, true, yes or on."""
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_SPLIT = "train"
HUB_DATA_FLAGS = {"hub": "hub_dataset", "hub_split": "hub_split", "hub_config": "hub_config",
                  "hub_column": "hub_column"}
"""The hub flags as a checkpoint records them: recorded name -> flag destination (see ``recipe.DataFlags``)."""


class HubError(RecipeError):
    """The hub cannot be reached, or a data set could not be loaded from it; one line, no traceback."""


def add_hub_arguments(group: argparse._ArgumentGroup, feature: str, dataset_help: str) -> None:
    """``--hub-dataset``, ``--hub-split``, ``--hub-config`` and ``--hub-column``: a hub data set whose ``feature``
    column (``"Audio"``, ``"Image"``) a recipe reads instead of ``--data``."""
    group.add_argument("--hub-dataset", metavar="NAME", help=dataset_help)
    group.add_argument("--hub-split", default=DEFAULT_SPLIT, metavar="SPLIT",
                       help=f"split of --hub-dataset (default: {DEFAULT_SPLIT})")
    group.add_argument("--hub-config", metavar="NAME", help="configuration (subset) of --hub-dataset")
    group.add_argument("--hub-column", metavar="NAME", help=f"{feature.lower()} column of --hub-dataset "
                       f"(default: the first column of the {feature} type)")


def hub_unreachable_reason(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub cannot be used now (offline mode, no connection, or no answer), or None if it
    answers.

    ``datasets`` retries for minutes without a network; this probe decides within ``timeout`` seconds to connect
    and as many again to be answered. A connection alone proves little: a proxy that accepts connections but
    never answers would pass, and ``datasets`` would then hang in its retries. So the probe also sends the
    endpoint one HEAD request, through the proxy ``huggingface_hub`` would use; any HTTP answer (a 4xx too) will do."""
    for variable in OFFLINE_VARIABLES:
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{variable} is set"
    url = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT)
    endpoint = urlparse(url)
    if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
        return f"HF_ENDPOINT {url!r} is not an http(s) URL"
    proxy = _proxy_for(endpoint)
    # Behind a proxy the hub is reached through it, so the proxy is what must answer.
    target = urlparse(proxy if "://" in proxy else f"http://{proxy}") if proxy else endpoint
    host = target.hostname or "huggingface.co"
    port = target.port or (443 if target.scheme == "https" else 80)
    # Connecting on its own first tells a host that does not resolve or refuses from one that does not answer.
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as error:
        return f"cannot connect to {host}:{port} ({error.strerror or error})"
    where = f"the proxy {host}:{port}" if proxy else f"{host}:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({endpoint.scheme: proxy} if proxy else {}),
                                         urllib.request.HTTPSHandler(context=_probe_tls()), _NoRedirect())
    try:
        with opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:  # an answer, if not a welcome one: the hub is there
        return None
    except (OSError, http.client.HTTPException, ValueError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        if isinstance(reason, TimeoutError):
            return f"{where} accepted a connection but did not answer within {timeout:g} s"
        return f"request to {where} failed ({getattr(reason, 'strerror', None) or reason})"


def _proxy_for(endpoint: ParseResult) -> str | None:
    """The proxy ``huggingface_hub`` sends requests to ``endpoint`` through, or None: as in its HTTP client, the
    ``*_PROXY`` variable of the endpoint's scheme, else ``ALL_PROXY``, unless ``NO_PROXY`` names the host."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(endpoint.scheme) or proxies.get("all")
    return None if not proxy or urllib.request.proxy_bypass(endpoint.netloc.rpartition("@")[2]) else proxy


def _probe_tls() -> ssl.SSLContext:
    """TLS for the probe, without certificate checks: the probe sends nothing secret and reads no content, and a
    proxy that re-signs traffic (its certificate given to ``huggingface_hub`` in REQUESTS_CA_BUNDLE...) still
    answers."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer already; following it would only spend the probe's time elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def load_hub_split(name: str, split: str, config: str | None) -> Any:
    """One split of a hub data set (a ``datasets.Dataset``), or a ``HubError`` within seconds when the hub
    cannot be reached."""
    reason = hub_unreachable_reason()
    if reason:
        raise HubError(f"cannot download {name} from the Hugging Face hub ({reason})")
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as error:  # any failure of the download is one line for the user
        raise HubError(f"could not load {name} (split {split}) from the hub: {error}") from None


def media_column(dataset: Any, requested: str | None, feature: str, where: str) -> str:
    """The column holding the media: ``requested`` (the recipes' ``--hub-column``), else the first column of
    the ``datasets`` feature type named ``feature`` (``"Audio"``, ``"Image"``)."""
    import datasets

    if requested:
        if requested not in dataset.column_names:
            raise RecipeError(f"--hub-column {requested}: {where} has no such column "
                              f"(columns: {', '.join(dataset.column_names)})")
        return requested
    for name, value in dataset.features.items():
        if isinstance(value, getattr(datasets, feature)):
            return name
    raise RecipeError(f"{where} has no {feature} column (columns: {', '.join(dataset.column_names)}); "
                      f"name the one holding the {feature.lower()} with --hub-column")


def media_documents(name: str, split: str, config: str | None, column: str | None, feature: str,
                    encode: Callable[[dict[str, Any]], bytes], *, limit: int | None,
                    skip: tuple[type[Exception], ...], unit: str,
                    offline_hint: str = "") -> tuple[dict[str, Any], Callable[[], Iterator[bytes]]]:
    """(cache key, reader) for the media of one split of a hub data set, encoded row by row.

    The reader loads the split (the hub is only contacted when a cache is built), picks the column
    (``media_column``) and calls ``encode`` on each undecoded value ``{"bytes": ..., "path": ...}`` of the first
    ``limit`` rows. A row whose ``encode`` raises one of ``skip`` (a codec's error) is left out and counted;
    ``offline_hint`` (what to pass instead of the hub) ends the message when the hub cannot be used."""
    from tqdm.auto import tqdm

    def read() -> Iterator[bytes]:
        import datasets

        try:
            dataset = load_hub_split(name, split, config)
        except HubError as error:
            raise HubError(f"{error}; {offline_hint}" if offline_hint else str(error)) from None
        where = f"{name} (split {split})"
        chosen = media_column(dataset, column, feature, where)
        dataset = dataset.cast_column(chosen, getattr(datasets, feature)(decode=False)).select_columns([chosen])
        count = len(dataset) if limit is None else min(limit, len(dataset))
        skipped: list[str] = []
        for index in tqdm(range(count), desc=f"encoding {name}", unit=unit):
            try:
                yield encode(dataset[index][chosen])
            except skip as error:
                skipped.append(f"row {index}: {getattr(error, 'reason', error)}")
        if skipped:
            print(f"skipped {len(skipped)} unusable {unit}s of {where} (first: {skipped[0]})", file=sys.stderr)

    return {"hub": name, "split": split, "config": config, "column": column, "limit": limit}, read
