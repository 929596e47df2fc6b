"""Fixtures shared by the codec tests (no torch, no bytemodels: codecs stand alone)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bytecodecs import registry

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The offline data folder next to the checkout; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (see the project README)")
    return SHARED_DATA


@pytest.fixture
def clean_registry():
    """Let a test register codecs freely; the registry is restored afterwards."""
    for name in registry._BUILTIN_MODULES:  # import built-ins first: they register only once
        registry.codec_class(name)
    saved = dict(registry._codecs)
    yield registry
    registry._codecs.clear()
    registry._codecs.update(saved)
