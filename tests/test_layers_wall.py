"""The walls between the layers, read from the source: the core (``bytemodels/*.py``) imports neither the app layer
(``bytemodels.app``) nor the codecs (``bytecodecs``) nor the recipes, not even inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "bytemodels"
FORBIDDEN = ("bytemodels.app", "bytecodecs", "recipes")
"""What the core never imports (a name, or a module under it)."""
ENTRY_POINTS = ("__main__.py",)
"""``python -m bytemodels`` runs the command, which is app code; nothing imports this file."""


def imported_modules(source: str) -> set[str]:
    """Every module an ``import`` or ``from ... import`` anywhere in ``source`` names, with the names a
    ``from`` brings in as modules too (``from bytemodels import app`` imports ``bytemodels.app``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def crosses_wall(module: str) -> bool:
    return any(module == wall or module.startswith(wall + ".") for wall in FORBIDDEN)


CORE_MODULES = sorted(path for path in CORE.glob("*.py") if path.name not in ENTRY_POINTS)


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda path: path.name)
def test_core_module_imports_neither_the_app_layer_nor_the_codecs(path):
    crossing = sorted(m for m in imported_modules(path.read_text(encoding="utf-8")) if crosses_wall(m))
    assert not crossing, f"bytemodels/{path.name} (core) imports {crossing}: move that code to bytemodels/app/"


def test_the_wall_check_sees_lazy_and_from_imports():
    source = ("def f():\n    import bytecodecs.wav\n"
              "from bytemodels import app\nfrom bytemodels.data import ByteDataset\n")
    assert sorted(m for m in imported_modules(source) if crosses_wall(m)) == ["bytecodecs.wav", "bytemodels.app"]
    assert len(CORE_MODULES) > 10  # the glob found the core
