"""The docs stay in step with the code: every public name is documented, every page is linked."""

import re
from pathlib import Path

import bytecodecs
import bytemodels

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_api_page_names_every_public_object():
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    missing = [f"{module.__name__}.{name}" for module in (bytemodels, bytecodecs) for name in module.__all__
               if f"`{module.__name__}.{name}" not in text]
    assert not missing, f"docs/api.md is stale (run python docs/make_api.py): {missing}"


def test_index_links_every_page_and_every_link_exists():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([\w-]+\.md)\)", index))
    pages = {path.name for path in DOCS.glob("*.md")} - {"index.md"}
    assert pages <= linked, f"pages not linked from docs/index.md: {sorted(pages - linked)}"
    assert all((DOCS / name).is_file() for name in linked)


def test_recipes_page_lists_every_flag_of_every_recipe():
    """docs/recipes.md's --help listings are current (python docs/make_recipe_help.py rewrites them)."""
    import importlib

    text = (DOCS / "recipes.md").read_text(encoding="utf-8")
    for name in ("tinystories", "audio", "images", "mixed"):
        module = importlib.import_module(f"recipes.{name}")
        parser = module.build_train_parser() if hasattr(module, "build_train_parser") else module.build_parser()
        flags = {option for action in parser._actions for option in action.option_strings if option.startswith("--")}
        missing = sorted(flag for flag in flags if not re.search(rf"{re.escape(flag)}\b", text))
        assert not missing, f"docs/recipes.md lacks flags of recipes.{name} (run python docs/make_recipe_help.py): {missing}"
    for removed in ("--activation", "--value-embeds", "--head-gain", "--input-skip", "--previous-byte"):
        assert removed not in text, removed
