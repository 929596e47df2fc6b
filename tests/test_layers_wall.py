"""The walls between the layers, read from the source: the core (``bytemodels/*.py``) imports neither the app layer
(``bytemodels.app``) nor the codecs (``bytecodecs``) nor the recipes, not even inside a function; the app layer
(``bytemodels/app/*.py``) imports neither the codecs nor the recipes. Only the command, ``bytemodels/cli.py``, may."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "bytemodels"
FORBIDDEN = ("bytemodels.app", "bytecodecs", "recipes")
"""What the core never imports (a name, or a module under it)."""
ENTRY_POINTS = ("__main__.py", "cli.py")
"""The command (``bytemodels/cli.py``, which turns a checkpoint's codec record back into a codec and runs the
recipes) and ``python -m bytemodels``, which runs it; nothing in the core imports either."""
APP = CORE / "app"
APP_FORBIDDEN = ("bytecodecs", "recipes")


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


@pytest.mark.parametrize("path", sorted(APP.glob("*.py")), ids=lambda path: path.name)
def test_app_module_imports_neither_the_codecs_nor_the_recipes(path):
    crossing = sorted(m for m in imported_modules(path.read_text(encoding="utf-8"))
                      if any(m == wall or m.startswith(wall + ".") for wall in APP_FORBIDDEN))
    assert not crossing, f"bytemodels/app/{path.name} imports {crossing}: only bytemodels/cli.py may"


def test_nothing_in_the_core_imports_the_command():
    for path in CORE_MODULES:
        assert "bytemodels.cli" not in imported_modules(path.read_text(encoding="utf-8")), path.name


def test_the_wall_check_sees_lazy_and_from_imports():
    source = ("def f():\n    import bytecodecs.wav\n"
              "from bytemodels import app\nfrom bytemodels.data import ByteDataset\n")
    assert sorted(m for m in imported_modules(source) if crosses_wall(m)) == ["bytecodecs.wav", "bytemodels.app"]
    assert len(CORE_MODULES) > 10  # the glob found the core


FACE_USERS = sorted([*(CORE.parent / "recipes").glob("*.py"), *(CORE.parent / "benchmarks").glob("*.py")])


@pytest.mark.parametrize("path", FACE_USERS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_recipes_and_benchmarks_do_not_import_the_command(path):
    """The command line is a face: what recipes and benchmarks share with it lives in core modules."""
    assert "bytemodels.cli" not in imported_modules(path.read_text(encoding="utf-8")), path
